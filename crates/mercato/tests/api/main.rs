//! Black-box tests: the real app on a random port, a fresh database per test.

mod catalog;
mod health;
mod helpers;
mod rls;
mod tenancy;
