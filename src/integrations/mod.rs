//! Integrations with other systems.

pub mod sentry;
