//! Integration tests over real sockets: one binary, one module per area.

mod admin;
mod auth;
mod backends;
mod cli;
mod docs;
mod examples;
mod hardening;
mod helpers;
mod metrics;
mod pools;
mod processes;
mod provisioners;
mod rest;
mod service;
mod timeouts;
mod tls;
mod transport;
