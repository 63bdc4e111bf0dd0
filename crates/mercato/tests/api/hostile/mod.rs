//! What a hostile merchant, a hostile receiver or a careless operator can
//! try (issue 35), each kept closed by a test: one file per front.

mod inputs;
mod leaks;
mod roles;
mod webhooks;
