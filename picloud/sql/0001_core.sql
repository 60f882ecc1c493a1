-- Platform core: apps (tenants), principals, memberships, scripts.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE TABLE apps (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        VARCHAR(63) NOT NULL UNIQUE,
    name        VARCHAR(200) NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- One principal per Django user. Whether it is active is read from the
-- user row (auth_user.is_active), never copied here.
CREATE TABLE principals (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     INTEGER NOT NULL UNIQUE REFERENCES auth_user(id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Users that existed before this migration get their principal now; later
-- ones get it from a post_save signal.
INSERT INTO principals (user_id) SELECT id FROM auth_user ON CONFLICT DO NOTHING;

CREATE TABLE app_memberships (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id        UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    principal_id  UUID NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    -- 'admin' is the AppAdmin role (picloud.authz.Role).
    role          VARCHAR(20) NOT NULL CHECK (role IN ('viewer', 'developer', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT app_memberships_app_principal_key UNIQUE (app_id, principal_id)
);
-- "Which apps may this principal see?" (admin list filtering).
CREATE INDEX app_memberships_principal_idx ON app_memberships (principal_id);

CREATE TABLE scripts (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        VARCHAR(200) NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT scripts_app_name_key UNIQUE (app_id, name)
);
