//! The web UI at `/ui/`, as Consul's (`-ui`): one HTML page and its JS modules and CSS, all
//! embedded in the binary at build time (`include_bytes!`), so building the project needs no
//! Node toolchain and a `FROM scratch` image serves the UI with nothing beside the binary.
//!
//! The page is a client of the public HTTP API only (`/v1/...` on the same origin, through
//! the agent or server that served it), so it sees exactly what any API client sees and adds
//! no endpoint of its own beyond Consul's `/v1/internal/ui/*` summaries (served by the
//! servers, `registry-server/src/http/ui.rs`).
//!
//! Every answer carries a strict `Content-Security-Policy`: scripts and styles only from
//! files of this origin (nothing inline), no framing, no plugins. The app builds the DOM with
//! `textContent`, never `innerHTML` with data, so a service name or KV value cannot run script.
//!
//! Owns: the assets and how they are served. Must not touch: the API (the servers' and
//! agents' routers merge this one next to theirs with `--ui`).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::sync::LazyLock;

/// The policy on every UI answer. `connect-src 'self'`: the app talks only to the API of
/// the process that served it (cross-DC reads go through `?dc=`, never to another origin).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// The name under `/ui/assets/`.
    name: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes, as built into the binary.
    body: &'static [u8],
}

/// Every file of the app. Adding a file to `assets/` means adding it here too (the unit
/// test below checks that each file on disk is listed).
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/dom.js"),
    },
    Asset {
        name: "catalog.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/catalog.js"),
    },
    Asset {
        name: "kv.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/kv.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../assets/favicon.svg"),
    },
];

/// The page itself (served at `/ui/`, not under `assets/`).
const INDEX_HTML: &[u8] = include_bytes!("../assets/index.html");

/// Entity tags, one per asset (and the page last), computed once: the files change only
/// with the binary, so a browser revalidates (`Cache-Control: no-cache`) and gets a 304
/// until the binary is upgraded, and never runs an old `app.js` against a new API.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| a.body)
        .chain(std::iter::once(INDEX_HTML))
        .map(etag)
        .collect()
});

/// A strong entity tag: FNV-1a (64 bits) of the content. Not a security measure, only a
/// change detector for files built into the binary.
fn etag(body: &[u8]) -> HeaderValue {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Hex digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{h:016x}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The UI's routes: `GET /` and `GET /ui` redirect to `/ui/` (as Consul's do), `GET /ui/` is
/// the page, `GET /ui/assets/<file>` its files (404 for any other name). `get` answers HEAD
/// too; any other method is a 405 with `Allow`. Generic over the state so that it merges
/// into any router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(to_ui))
        .route("/ui", get(to_ui))
        .route("/ui/", get(index))
        .route("/ui/assets/{file}", get(asset))
}

async fn to_ui() -> Redirect {
    // Temporary: a browser must not remember `/` -> `/ui/` for a process that may later
    // run without `--ui`.
    Redirect::temporary("/ui/")
}

async fn index(headers: HeaderMap) -> Response {
    let tag = &ETAGS[ASSETS.len()];
    serve(&headers, "text/html; charset=utf-8", INDEX_HTML, tag)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => {
            let a = &ASSETS[i];
            serve(&headers, a.content_type, a.body, &ETAGS[i])
        }
        None => with_security_headers((StatusCode::NOT_FOUND, "No such UI asset").into_response()),
    }
}

/// The file, or a 304 when the browser's copy (`If-None-Match`) is this one.
fn serve(
    headers: &HeaderMap,
    content_type: &'static str,
    body: &'static [u8],
    tag: &HeaderValue,
) -> Response {
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim() == tag.to_str().unwrap_or_default());
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, tag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_security_headers(resp)
}

/// The headers every UI answer carries (the page's and each file's, a 404 too).
fn with_security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn call(method: &str, uri: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let req = req.body(Body::empty()).unwrap();
        router::<()>().oneshot(req).await.unwrap()
    }

    fn header_of(resp: &Response, name: header::HeaderName) -> String {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn the_page_and_its_files_carry_their_type_caching_and_policy() {
        let page = call("GET", "/ui/", None).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            header_of(&page, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&page, header::CACHE_CONTROL), "no-cache");
        assert_eq!(
            header_of(&page, header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        for (file, ty) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("app.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ] {
            let resp = call("GET", &format!("/ui/assets/{file}"), None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{file}");
            assert_eq!(header_of(&resp, header::CONTENT_TYPE), ty, "{file}");
            assert_eq!(header_of(&resp, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            // Revalidation: the same tag is a 304 with no body.
            let tag = header_of(&resp, header::ETAG);
            let again = call("GET", &format!("/ui/assets/{file}"), Some(&tag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{file}");
            let body = axum::body::to_bytes(again.into_body(), 1 << 20)
                .await
                .unwrap();
            assert!(body.is_empty());
        }
        let head = call("HEAD", "/ui/assets/app.js", None).await;
        assert_eq!(head.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn redirects_unknown_files_and_other_methods() {
        for from in ["/", "/ui"] {
            let resp = call("GET", from, None).await;
            assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT, "{from}");
            assert_eq!(header_of(&resp, header::LOCATION), "/ui/");
        }
        for missing in [
            "/ui/assets/nope.js",
            "/ui/assets/..%2fCargo.toml",
            "/ui/assets/",
        ] {
            let resp = call("GET", missing, None).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{missing}");
        }
        let put = call("PUT", "/ui/assets/app.js", None).await;
        assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(header_of(&put, header::ALLOW).contains("GET"));
    }

    /// A file added to `assets/` but not to [`ASSETS`] would be a 404 in the browser.
    #[test]
    fn every_file_in_assets_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                name == "index.html" || ASSETS.iter().any(|a| a.name == name),
                "assets/{name} is not in ASSETS"
            );
        }
    }

    /// The policy forbids inline script and style: the page must have none.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = std::str::from_utf8(INDEX_HTML).unwrap();
        assert!(!page.contains("<style"), "inline <style> in index.html");
        assert!(
            !page.contains(" style="),
            "inline style attribute in index.html"
        );
        for script in page.split("<script").skip(1) {
            assert!(script.contains("src="), "inline <script> in index.html");
        }
        assert!(!page.contains("onclick="), "inline handler in index.html");
    }
}
