-- API-key management and idempotent merchant creation.
--
-- A merchant may hold several live keys; each records when it was last used
-- (at most once per key-cache period, see tenancy::KeyCache). A merchant created
-- under an Idempotency-Key keeps it, with a hash of the request, so a retry finds
-- that merchant instead of creating another.

alter table api_keys add column last_used_at timestamptz;

alter table merchants add column creation_key text;
alter table merchants add column creation_hash bytea;
create unique index merchants_creation_key on merchants (creation_key) where creation_key is not null;
