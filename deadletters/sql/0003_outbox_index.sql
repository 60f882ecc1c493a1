-- "Is there a dead letter for this outbox row?" — asked by fan-out so a
-- script writing in a loop past the depth limit records one dead letter per
-- stopped cascade, and by the dispatcher's replays.
--
-- WARNING: migrations run this file; add a new one to change it.

CREATE INDEX dead_letters_outbox_idx ON dead_letters (outbox_id) WHERE outbox_id IS NOT NULL;
