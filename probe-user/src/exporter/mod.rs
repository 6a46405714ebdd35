//! Serving metrics: encoding ([`metrics`], [`classic`]) and HTTP ([`http`]).

pub mod classic;
pub mod http;
pub mod metrics;
