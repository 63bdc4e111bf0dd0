-- People (issue 37, items 1, 2 and 4): the persons who log in (a merchant's
-- staff, the platform's operators), what each may do at which merchant,
-- their invitations and their sessions; and a merchant's status (an operator
-- may suspend one).
--
-- Everything here lives in the main database, beside `merchants` and
-- `api_keys` (the directory): a login names no merchant, so it must find
-- the person wherever the merchant's cell is. A move never carries these.

-- A person: one login (an e-mail address, stored in lower case) across
-- every merchant they work for. `password_hash` is an Argon2id PHC string.
create table people (
    id uuid primary key,
    email text not null unique check (email = lower(email) and length(email) between 3 and 254),
    password_hash text not null,
    -- A platform operator (issue 37, item 4); else only a merchant's staff.
    operator boolean not null default false,
    -- The TOTP secret (RFC 6238) once a second factor is on; null: off.
    totp_secret bytea,
    created_at timestamptz not null default now(),
    password_changed_at timestamptz not null default now()
);

-- Who works for which merchant, as what. A tenant table (row-level security).
-- `person_id` names a row of `people` without a foreign key: every key of a
-- tenant table leads with merchant_id, and people are never deleted (the
-- service roles hold no DELETE on them).
create table staff (
    merchant_id uuid not null references merchants (id),
    person_id uuid not null,
    role text not null check (role in ('owner', 'admin', 'staff', 'support', 'viewer')),
    created_at timestamptz not null default now(),
    primary key (merchant_id, person_id)
);
create index staff_by_person on staff (person_id);

-- An invitation to join a merchant's staff: an e-mailed, expiring,
-- single-use link. Only the token's hash is kept.
create table staff_invitations (
    merchant_id uuid not null references merchants (id),
    id uuid not null,
    email text not null check (email = lower(email) and length(email) between 3 and 254),
    role text not null check (role in ('owner', 'admin', 'staff', 'support', 'viewer')),
    token_hash bytea not null,
    expires_at timestamptz not null,
    accepted_at timestamptz,
    revoked_at timestamptz,
    created_at timestamptz not null default now(),
    primary key (merchant_id, id),
    unique (merchant_id, token_hash)
);

do $$
declare t text;
begin
    foreach t in array array['staff', 'staff_invitations'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format(
            'create policy tenant_isolation on %I using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id())',
            t);
        execute format('drop trigger if exists audit on %I', t);
    end loop;
end $$;
create trigger audit after insert or update or delete on staff for each row
    when (coalesce(current_setting('app.audit', true), '') <> '')
    execute function mercato_audit('person_id', '');
create trigger audit after insert or update or delete on staff_invitations for each row
    when (coalesce(current_setting('app.audit', true), '') <> '')
    execute function mercato_audit('id', 'token_hash,email');

-- A person's session: a browser's cookie or a script's bearer token (the
-- same secret; only its hash is kept). `merchant_id` is the merchant the
-- session works for; null: an operator's session (the platform).
create table sessions (
    id uuid primary key,
    token_hash bytea not null unique,
    person_id uuid not null references people (id),
    merchant_id uuid references merchants (id),
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    revoked_at timestamptz,
    address text,
    user_agent text
);
create index sessions_by_person on sessions (person_id) where revoked_at is null;

-- Which merchants a person works for (a login names none): across tenants,
-- so behind a function, as the directory's other cross-tenant reads are.
create function mercato_memberships(person uuid) returns table (merchant_id uuid, role text)
language sql stable security definer set search_path = public as $$
    select s.merchant_id, s.role from staff s where s.person_id = person order by s.created_at, s.merchant_id
$$;
revoke all on function mercato_memberships(uuid) from public;
grant execute on function mercato_memberships(uuid) to mercato_app;

-- A merchant's status: a suspended one's keys, staff and storefront are
-- refused and its workers send nothing for it; nothing is deleted.
alter table merchants add column status text not null default 'active';
alter table merchants add constraint merchants_status_known
    check (status in ('active', 'suspended')) not valid;
alter table merchants validate constraint merchants_status_known;
alter table merchants add column status_reason text;
alter table merchants add column status_changed_at timestamptz;
