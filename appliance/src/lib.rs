//! sitesign's domain library: what the service `sitesignd` and the CLI `sitesign` share.
//!
//! Data flows one way: request → [`policy`] → [`pipeline`] → key backend ([`hsm_adapters`],
//! through [`backends`]) → [`audit`] → response. This crate owns everything above the backend;
//! the backend knows nothing of tokens.
//!
//! - [`config`]: `sitesign.toml`, validated;
//! - [`store`]: the state database, the single source of truth; [`state`]: an immutable snapshot
//!   of it that decisions are taken on; [`keys`]: the key inventory and the life of a key;
//! - [`token`]: token formats, issuance and strict verification; [`pki`]: certificate profiles,
//!   issuance through device keys, PKCS#10 requests, CRLs;
//! - [`policy`]: whether a request may have a token; [`pipeline`]: the signing workers;
//!   [`audit`]: the hash-chained log every signature is recorded in before it is released;
//! - [`admin`]: every operation that changes keys, certificates and registries, shared by the CLI
//!   and the service's admin socket;
//! - [`service`]: `sitesignd`, the mTLS API, its listeners and its admin socket.

pub mod admin;
pub mod audit;
pub mod backends;
pub mod backup;
pub mod config;
pub mod environment;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod pki;
pub mod policy;
pub mod selftest;
pub mod service;
pub mod state;
pub mod store;
pub mod time;
pub mod token;
pub mod witness;
