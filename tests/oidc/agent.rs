//! A person's browser, over plain HTTP: follows the provider's redirects by hand (keeping its
//! cookies), fills in its login form, and stops at the redirect to poolgate's callback.

use std::collections::BTreeMap;

use openidconnect::url::{Url, form_urlencoded};

use poolgate_test_common::oidc_provider::PUBLIC_URL;

/// One browser: its own cookies (by name, whichever server set them: the provider and
/// poolgate use different names), and where poolgate is (`home`).
pub struct Agent {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
    home: String,
}

/// Where a sign-in at the provider ended.
#[derive(Debug)]
pub enum Landed {
    /// The redirect to poolgate's callback: its query.
    Callback(String),
    /// A page of the provider (its status and body), e.g. the login form again.
    Page(u16, String),
}

impl Agent {
    pub fn new() -> Agent {
        Self::at(PUBLIC_URL)
    }

    /// A browser for a poolgate served at `home` (its `public_url`).
    pub fn at(home: &str) -> Agent {
        Agent {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
            home: home.trim_end_matches('/').to_owned(),
        }
    }

    /// One GET (no redirect followed), keeping cookies: status, `Location`, body.
    pub async fn get(&mut self, url: &str) -> (u16, Option<String>, String) {
        let response = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        self.keep_cookies(&response);
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (status, location, response.text().await.unwrap_or_default())
    }

    /// Opens `authorize_url`, signs in as `username` with `password` and returns the
    /// callback's query.
    pub async fn sign_in(&mut self, authorize_url: &str, username: &str, password: &str) -> String {
        match self
            .submit(
                authorize_url,
                "login",
                &[("username", username), ("password", password)],
            )
            .await
        {
            Landed::Callback(query) => query,
            other => panic!("the sign-in did not come back to poolgate: {other:?}"),
        }
    }

    /// Opens `authorize_url` and presses Cancel on the login form.
    pub async fn cancel(&mut self, authorize_url: &str) -> String {
        match self.submit(authorize_url, "abort", &[]).await {
            Landed::Callback(query) => query,
            other => panic!("the cancel did not come back to poolgate: {other:?}"),
        }
    }

    /// Opens `authorize_url`, which leads to the login form; posts `fields` to its `action`
    /// (`login` or `abort`) and follows the redirects from there.
    pub async fn submit(
        &mut self,
        authorize_url: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Landed {
        let form_url = match self.follow(authorize_url.to_owned()).await {
            (url, Landed::Page(200, body)) => {
                assert!(
                    body.contains("id=\"sign-in\""),
                    "not the login form at {url}: {body}"
                );
                url
            }
            (url, other) => panic!("{url} did not show the login form: {other:?}"),
        };
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let post = format!("{}/{action}", form_url.as_str().trim_end_matches('/'));
        let response = self
            .http
            .post(&post)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", self.cookie_header())
            .body(body)
            .send()
            .await
            .unwrap();
        match self.landed(&post, response).await {
            Step::Redirect(next) => self.follow(next).await.1,
            Step::Done(landed) => landed,
        }
    }

    /// GETs `url` and the redirects after it; returns the last URL and where it landed.
    async fn follow(&mut self, mut url: String) -> (Url, Landed) {
        for _ in 0..10 {
            if url.starts_with(&self.home) {
                let query = Url::parse(&url)
                    .unwrap()
                    .query()
                    .unwrap_or_default()
                    .to_owned();
                return (Url::parse(&url).unwrap(), Landed::Callback(query));
            }
            let response = self
                .http
                .get(&url)
                .header("cookie", self.cookie_header())
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            match self.landed(&url, response).await {
                Step::Redirect(next) => url = next,
                Step::Done(landed) => return (Url::parse(&url).unwrap(), landed),
            }
        }
        panic!("more than 10 redirects from {url}");
    }

    /// Keeps the response's cookies; a redirect's target (absolute), or the page.
    async fn landed(&mut self, url: &str, response: reqwest::Response) -> Step {
        self.keep_cookies(&response);
        let status = response.status();
        if status.is_redirection() {
            let location = response.headers()["location"].to_str().unwrap();
            let next = Url::parse(url).unwrap().join(location).unwrap();
            if next.as_str().starts_with(&self.home) {
                let query = next.query().unwrap_or_default().to_owned();
                return Step::Done(Landed::Callback(query));
            }
            return Step::Redirect(next.to_string());
        }
        Step::Done(Landed::Page(
            status.as_u16(),
            response.text().await.unwrap_or_default(),
        ))
    }

    /// One form POST from this server's own page (`Origin` its home; no redirect followed),
    /// keeping cookies: status, `Location`, body.
    pub async fn post_form(
        &mut self,
        url: &str,
        fields: &[(&str, &str)],
    ) -> (u16, Option<String>, String) {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let response = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &self.home)
            .header("cookie", self.cookie_header())
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        self.keep_cookies(&response);
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (status, location, response.text().await.unwrap_or_default())
    }

    /// The value of a cookie this browser keeps.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap_or_default();
            let removed = value
                .to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("max-age=0");
            if let Some((name, value)) = pair.split_once('=') {
                if removed {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies
                        .insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

enum Step {
    Redirect(String),
    Done(Landed),
}
