-- A legacy order's id told its reader how many orders the whole cell had
-- taken (issue 35, item 9): every merchant's orders draw from one sequence,
-- so two orders a day apart showed the platform's volume in between.
--
-- The sequence still guarantees uniqueness; what a merchant sees is its value
-- put through a keyed permutation of the integers below 2^52 (a four-round
-- Feistel network, SHA-256 as the round function, a random key made here and
-- readable only by the schema's owner). A permutation never maps two values to
-- one, so ids stay unique without a retry; without the key the next id says
-- nothing about the last. 2^52 keeps ids exact as JSON numbers in JavaScript.
-- Rows already written keep their ids.
create table legacy_order_id_key (
    singleton boolean primary key default true check (singleton),
    key bytea not null check (length(key) = 32)
);
insert into legacy_order_id_key (key)
select decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');

create function next_legacy_order_id() returns bigint
language plpgsql volatile security definer set search_path = pg_catalog, public as $$
declare
    n bigint := nextval('public.legacy_orders_id_seq');
    k bytea := (select key from public.legacy_order_id_key);
    half constant bigint := 67108863; -- 2^26 - 1
    l bigint;
    r bigint;
    f bigint;
    t bigint;
begin
    if n >= 4503599627370496 then -- 2^52: past the permutation's domain
        raise exception 'legacy order ids exhausted';
    end if;
    l := n >> 26;
    r := n & half;
    for i in 0..3 loop
        f := ('x' || left(encode(sha256(k || int2send(i::smallint) || int8send(r)), 'hex'), 7))::bit(28)::bigint & half;
        t := r;
        r := l # f;
        l := t;
    end loop;
    -- + 1: zero is no id.
    return ((l << 26) | r) + 1;
end $$;

revoke all on function next_legacy_order_id() from public;
grant execute on function next_legacy_order_id() to mercato_app;

alter table legacy_orders alter column id set default next_legacy_order_id();
