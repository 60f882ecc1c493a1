-- A per-trigger switch of the delivery log (outbox/sql/0008_delivery_log.sql):
-- a very hot trigger can keep only its failed attempts. Its successes are
-- still counted in the rollups (health columns, dashboard).
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

ALTER TABLE triggers ADD COLUMN log_failures_only BOOLEAN NOT NULL DEFAULT FALSE;
