-- A merchant's plan of rate limits (quotas::Plan as JSON: a rate and a burst per
-- route class); null: not limited. Set by the platform admin
-- (PATCH /v1/merchants/{id} {"rate_limits": …}).
alter table merchants add column rate_limits jsonb;
