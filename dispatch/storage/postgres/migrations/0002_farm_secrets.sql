-- Secrets every instance of the farm must share, generated once by the first instance
-- that needs one: the dashboard's session-signing secret (ui_session), so a sign-in
-- through one instance holds on the others behind the same nginx.

CREATE TABLE farm_secrets (
    name   text PRIMARY KEY,
    value  text NOT NULL
);
