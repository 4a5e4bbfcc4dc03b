//! sitesign's domain library: what the service `sitesignd` and the CLI `sitesign` share.
//!
//! Data flows one way: request → policy → pipeline → key backend ([`hsm_adapters`]) → audit →
//! response. This crate owns everything above the backend; the backend knows nothing of tokens.
//! Today it holds the configuration and the self-test; the token formats, PKI profiles, audit log,
//! state store and batch pipeline join it as they are built.

pub mod admin;
pub mod audit;
pub mod config;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod pki;
pub mod selftest;
pub mod service;
pub mod store;
pub mod token;
