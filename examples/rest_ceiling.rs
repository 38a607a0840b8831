//! The ceiling reference for the REST benchmark: a bare axum server (the same axum and hyper
//! as poolgate) answering `GET /api/v2/pools/` with fixed bytes — what poolgate answers for a
//! user, read from a file — and no authentication, no state, no layers. poolgate's
//! `GET /api/v2/pools/` with a valid JWT is measured against it (bench/rest.sh).
//!
//!     cargo run --release --example rest_ceiling -- 127.0.0.1:9002 body.json

use axum::Router;
use axum::http::header;
use axum::routing::get;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9002".into());
    let body = match args.next() {
        Some(path) => std::fs::read(path)?,
        None => br#"{"data":[],"total":0,"page":1,"size":50,"pages":0}"#.to_vec(),
    };
    let body = bytes::Bytes::from(body);
    let app = Router::new().route(
        "/api/v2/pools/",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "REST ceiling listening on http://{}/",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
