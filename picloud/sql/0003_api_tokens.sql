-- API tokens: a principal's credentials for the HTTP API.
--
-- The token itself is shown once, when it is created, and never stored: we
-- keep its SHA-256. Tokens are 256 random bits, so a fast hash is enough
-- (nobody can guess their way to a preimage) and lets one indexed lookup
-- find the token. `prefix` is its first characters, kept to tell tokens
-- apart in lists.
--
-- WARNING: migrations run this file; add a new one to change it.

CREATE TABLE api_tokens (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    principal_id  UUID NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    name          VARCHAR(200) NOT NULL,
    prefix        VARCHAR(16) NOT NULL,
    token_hash    CHAR(64) NOT NULL,
    -- A subset of the seven scopes (picloud.authz.Scope), at least one.
    scopes        TEXT[] NOT NULL CHECK (
        cardinality(scopes) > 0
        AND scopes <@ ARRAY['app:read', 'kv:read', 'kv:write', 'script:invoke',
                            'script:manage', 'app:admin', 'platform:admin']
    ),
    -- NULL: any app the principal's roles reach; else only this one.
    app_id        UUID REFERENCES apps(id) ON DELETE CASCADE,
    expires_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX api_tokens_principal_idx ON api_tokens (principal_id);
