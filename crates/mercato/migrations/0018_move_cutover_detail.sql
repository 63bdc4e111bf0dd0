-- What a move's cutover spent its time on: the narrowing rounds before the
-- pause (keys left to recheck after each) and the pause's own steps, so a
-- long write pause can be explained from the move record.
alter table tenant_moves add column cutover jsonb;
