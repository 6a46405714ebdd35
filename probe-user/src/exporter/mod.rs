//! Serving metrics: encoding ([`metrics`], [`classic`]) and HTTP ([`http`]; TLS and basic auth
//! as [`crate::webconfig`] says).

pub mod classic;
pub mod http;
pub mod metrics;
