//! The console's sessions, where the node requires a second factor
//! (`[second_factor]`): every caller who may sign in sees the sign-in
//! page until it has a session, which an admin or operator opens with a
//! TOTP code (the gRPC `SignIn`'s check) and an auditor with a click (its
//! certificate is its only factor). The session (`policy::second_factor`)
//! is a cookie (`Secure`, `HttpOnly`, `SameSite=Strict`) and ends after
//! `idle_secs` without a request, or `session_secs` after the sign-in.
//! Other callers (agents, replicas, no certificate) pass to the pages,
//! whose own checks refuse them.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use refuge_tls::identity_from_cert;
use serde::Deserialize;

use super::pages::{SIGN_IN, admit, form_token, html, nav};
use super::views::LoginPage;
use super::{Console, Peer};
use crate::catalog::slo::secs;
use crate::floor::store::blocking;

const COOKIE: &str = "refuge_session";

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix("refuge_session=")
                .map(str::to_string)
        })
}

/// Where a sign-in may send the browser: a path of this site only.
fn local(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next.to_string()
    } else {
        "/".into()
    }
}

fn login_page(
    c: &Console,
    who: &refuge_tls::ClientIdentity,
    next: &str,
    error: String,
) -> Response {
    let sf = c.node.access.second.as_ref();
    let idle = sf.map_or(0, |sf| sf.idle_secs());
    let code = sf.is_some_and(|sf| sf.needed(who));
    html(
        StatusCode::UNAUTHORIZED,
        &LoginPage {
            nav: nav(c, who, ""),
            error,
            token: form_token(c, who),
            next: local(next),
            idle: secs(idle),
            code,
        },
    )
}

/// Lets a request through if its caller may not sign in at all (the
/// page refuses it) or carries a live session; otherwise answers the
/// sign-in page.
pub(crate) async fn require(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let Some(sf) = c.node.access.second.clone() else {
        return next.run(req).await;
    };
    if path == "/login" || path == "/console.css" {
        return next.run(req).await;
    }
    let who = match peer.leaf.as_deref().map(|l| identity_from_cert(l)) {
        Some(Ok(who)) if SIGN_IN.contains(&who.role) => who,
        // The pages refuse (and audit) what is not a signed-in identity.
        _ => return next.run(req).await,
    };
    let why = match cookie(req.headers()) {
        None => String::new(),
        Some(token) => match sf.session(&who, &token, true) {
            Ok(()) => return next.run(req).await,
            Err(why) => why,
        },
    };
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    login_page(&c, &who, &target, why)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    code: String,
    token: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: checks the code and sets the session's cookie.
pub(crate) async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(f): Form<LoginForm>,
) -> Response {
    let who = match admit(&c, &peer, "SignIn", &SIGN_IN) {
        Ok(w) => w,
        Err(page) => return page,
    };
    let Some(sf) = c.node.access.second.clone() else {
        return Redirect::to("/").into_response();
    };
    if f.token != form_token(&c, &who) {
        return login_page(
            &c,
            &who,
            &f.next,
            "the form's token does not belong to your certificate: reload the page".into(),
        );
    }
    let w = who.clone();
    let code = f.code.clone();
    let opened = blocking(move || {
        if sf.needed(&w) {
            sf.sign_in(&w, &code)
        } else {
            sf.open_session(&w)
        }
    });
    match opened.await {
        Ok(opened) => {
            let mut r = Redirect::to(&local(&f.next)).into_response();
            let v = format!(
                "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict",
                opened.token
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(s) => login_page(&c, &who, &f.next, s.message().to_string()),
    }
}

/// `GET /login`: the sign-in page (or the fleet, when none is needed).
pub(crate) async fn login_form(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Response {
    match admit(&c, &peer, "SignIn", &SIGN_IN) {
        Ok(who) => login_page(&c, &who, "/", String::new()),
        Err(page) => page,
    }
}
