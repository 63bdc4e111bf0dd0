-- Scoped API keys (issue 37, item 3): what a key may do, and until when.
-- `scopes` null: full access (every key made before scopes existed keeps
-- it); otherwise the scopes of `tenancy::scopes::Scope`. Catalog-only
-- changes: no rewrite of api_keys.
alter table api_keys add column scopes text[];
alter table api_keys add column expires_at timestamptz;
alter table api_keys add constraint api_keys_scopes_not_empty
    check (scopes is null or cardinality(scopes) > 0) not valid;
alter table api_keys validate constraint api_keys_scopes_not_empty;
