//! The HTTP client under every S3 and HTTP remote: object_store's requests
//! with one policy of our own, for redirects.
//!
//! A remote's server is not trusted (its answers are verified against the
//! signed manifest), but the requests it can make this host send are the
//! host's own. Followed freely, a redirect would let a hostile mirror point
//! `nip pull` or a fetcher at any address this host reaches (a metadata
//! service, an admin page on 127.0.0.1): a blind request forgery whose
//! answer is discarded, but whose request is made. So a redirect is
//! followed only when it stays at the remote's origin (scheme, host and
//! port), as a web server's own rewrites do; any other is refused, naming
//! where it pointed, before a connection is made there.

use std::time::Duration;

use object_store::ClientOptions;
use object_store::client::{HttpClient, HttpConnector};
use reqwest::Url;
use reqwest::redirect::{Attempt, Policy};

/// Most redirects followed for one request (reqwest's own default).
const MAX_REDIRECTS: usize = 10;

/// Connects object_store to a reqwest client that follows redirects only
/// within the origin of the request's first URL.
#[derive(Debug)]
pub(crate) struct SameOriginConnector {
    /// Bound on each connection attempt.
    pub(crate) connect_timeout: Duration,
    /// Bound on a whole request, body included.
    pub(crate) timeout: Duration,
}

impl HttpConnector for SameOriginConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("nexus/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            // A compressed answer's `Content-Length` is not the object's:
            // object_store reads sizes from it (its own client does the same).
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .redirect(Policy::custom(same_origin_only))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "HTTP",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

/// A redirect refused: where it pointed, and why.
#[derive(Debug, thiserror::Error)]
enum RedirectRefused {
    #[error("redirected away from the remote's origin {from} to {to}; refused")]
    OtherOrigin { from: String, to: String },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
}

/// True when `error` is (or was caused by) a redirect this client refused.
pub(crate) fn refused_redirect(error: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<RedirectRefused>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The redirect policy: follow `attempt` when it stays at the origin of the
/// first URL asked for.
fn same_origin_only(attempt: Attempt<'_>) -> reqwest::redirect::Action {
    let Some(first) = attempt.previous().first() else {
        return attempt.follow();
    };
    if attempt.previous().len() > MAX_REDIRECTS {
        return attempt.error(RedirectRefused::TooMany);
    }
    if same_origin(first, attempt.url()) {
        return attempt.follow();
    }
    let refused = RedirectRefused::OtherOrigin {
        from: origin(first),
        to: origin(attempt.url()),
    };
    attempt.error(refused)
}

/// Scheme, host and port (the scheme's default when none is given) agree.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `scheme://host:port` of `url`, for messages.
fn origin(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => url.scheme().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn only_scheme_host_and_port_make_an_origin() {
        let base = url("http://mirror.example/nexus/manifest");
        assert!(same_origin(
            &base,
            &url("http://mirror.example:80/other/path")
        ));
        assert!(!same_origin(
            &base,
            &url("https://mirror.example/nexus/manifest")
        ));
        assert!(!same_origin(
            &base,
            &url("http://mirror.example:8080/nexus")
        ));
        assert!(!same_origin(&base, &url("http://169.254.169.254/latest")));
        assert!(!same_origin(
            &base,
            &url("http://mirror.example.attacker.test/")
        ));
    }
}
