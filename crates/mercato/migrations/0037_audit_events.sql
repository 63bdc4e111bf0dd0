-- Audit records of what changes no audited row (issue 37, item 5): a login,
-- a failed login, a move started. The audit context's interface for them:
-- any context records one through this function, in its own transaction,
-- for the transaction's merchant, without naming `audit_log` itself. It
-- runs as its caller: the service roles may insert records (and only that).
create function mercato_audit_event(
    action text, actor_kind text, actor text, target_type text, target_id text,
    changes jsonb, address text, user_agent text, request_id text
) returns void
language sql volatile as $$
    insert into audit_log (merchant_id, id, action, actor_kind, actor, target_type, target_id,
                           operation, changes, address, user_agent, request_id)
    values (current_merchant_id(), mercato_uuid_v7(), action, actor_kind, actor, target_type,
            target_id, 'insert', changes, address, user_agent, request_id)
$$;
