//! The console's routes: every page of `pages`, the sign-in of
//! `session` (which guards the pages where a second factor is needed),
//! and the headers every answer carries.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;

use super::pages::{audit, css, drill, fleet, node, node_drill, not_found, source, start_drill};
use super::{Console, session};

/// Every route of the console.
pub(super) fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(fleet))
        .route("/console.css", get(css))
        .route("/source/{tenant}/{host}/{source}", get(source))
        .route("/drill/{tenant}/{seq}", get(drill))
        .route("/drills", axum::routing::post(start_drill))
        .route("/drills/{id}", get(node_drill))
        .route("/audit", get(audit))
        .route("/node", get(node))
        .route("/login", get(session::login_form).post(session::login))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            session::require,
        ))
        .layer(axum::middleware::map_response(headers))
        .with_state(console)
}

/// What every page says to the browser: nothing from elsewhere, no
/// framing, no caching of tenant data.
async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}
