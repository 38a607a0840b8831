//! Integration tests over real sockets: one binary, one module per area.

mod admin;
mod app;
mod auth;
mod backends;
mod cli;
mod connections;
mod diagnostics;
mod docs;
mod examples;
mod exposure;
mod guacamole;
mod hardening;
mod keys;
mod limits;
mod lockout;
mod metrics;
mod origin;
mod pools;
mod processes;
mod provisioner_secrets;
mod provisioners;
mod proxy_protocol;
mod rest;
mod rest_order;
mod service;
mod timeouts;
mod tls;
mod transport;
mod warm_sets;

use poolgate_test_common::helpers;
