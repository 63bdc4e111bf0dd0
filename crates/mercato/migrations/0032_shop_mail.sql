-- The shop's own mail to its shoppers (issue 36): who a merchant's messages
-- are from, and the sender each queued message was written with.

create table mail_settings (
    merchant_id uuid not null references merchants (id) primary key,
    -- The name shoppers see (null: the merchant's name).
    from_name text check (length(from_name) between 1 and 100),
    -- The address (null: the platform's sender address).
    from_address text check (length(from_address) between 3 and 254),
    updated_at timestamptz not null default now()
);
alter table mail_settings enable row level security;
alter table mail_settings force row level security;
create policy tenant_isolation on mail_settings
    using (merchant_id = current_merchant_id()) with check (merchant_id = current_merchant_id());

-- Null: the transport's own sender (every message queued before this).
alter table mail_outbox add column from_address text;
