//! Serving metrics: encoding ([`metrics`], [`classic`]), HTTP ([`http`]) and its TLS and basic
//! auth ([`webconfig`]).

pub mod classic;
pub mod http;
pub mod metrics;
pub mod webconfig;
