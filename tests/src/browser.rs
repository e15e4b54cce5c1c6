//! A real headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup.sh`) signed in with a client certificate, driven over
//! the DevTools protocol (the `headless_chrome` crate).
//!
//! Chromium on Linux reads client certificates from the NSS database in
//! `$HOME/.pki/nssdb`, so each [`Browser`] gets a home of its own: the
//! test's CA trusted for servers, and the identity's certificate and key
//! (as PKCS #12, made with `openssl`, imported with `pk12util` from
//! `libnss3-tools`). A browser without an identity has only the CA. A
//! headless browser cannot ask which certificate to send; the managed
//! policy `AutoSelectCertificateForUrls` for `https://127.0.0.1:*`, which
//! `scripts/setup.sh` writes to `/etc/chromium/policies/managed/`, makes it
//! send the one it has.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_chrome::{Browser as Chrome, LaunchOptions, Tab};

/// The managed policy `scripts/setup.sh` installs.
pub const POLICY: &str = "/etc/chromium/policies/managed/refuge-tests.json";

/// One Chromium with a home (and NSS database) of its own.
pub struct Browser {
    /// `None` only while dropping: Chromium goes before its home.
    chrome: Option<Chrome>,
    pub tab: Arc<Tab>,
    /// Chromium's home and profile, removed on drop.
    home: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.chrome.take());
        // Chromium's helpers can still write into the profile for a moment
        // after the browser is gone (a removal then meets a directory that
        // is not empty): try again for up to two seconds.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.home).is_ok() || !self.home.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tool(cmd: &mut Command, what: &str) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/setup.sh installs libnss3-tools)"));
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Browser {
    /// A browser trusting `ca` and, with `identity` (the base path of a
    /// `NAME.pem` and `NAME.key` pair), signed in as it.
    pub fn new(ca: &Path, identity: Option<&Path>) -> Self {
        let chromium = PathBuf::from("/usr/bin/chromium");
        assert!(
            chromium.exists(),
            "no /usr/bin/chromium: scripts/setup.sh installs Debian's chromium"
        );
        let policy = std::fs::read_to_string(POLICY).unwrap_or_default();
        assert!(
            policy.contains("AutoSelectCertificateForUrls"),
            "no Chromium policy at {POLICY}: scripts/setup.sh writes it"
        );
        let home = tempfile::Builder::new()
            .prefix("refuge-chromium-")
            .tempdir()
            .unwrap();
        let db = home.path().join(".pki/nssdb");
        std::fs::create_dir_all(&db).unwrap();
        let sql = format!("sql:{}", db.display());
        tool(
            Command::new("certutil").args(["-N", "-d", &sql, "--empty-password"]),
            "certutil -N",
        );
        tool(
            Command::new("certutil")
                .args(["-A", "-d", &sql, "-n", "refuge test CA", "-t", "C,,", "-i"])
                .arg(ca),
            "certutil -A (the CA)",
        );
        if let Some(id) = identity {
            let p12 = home.path().join("identity.p12");
            let with = |ext: &str| PathBuf::from(format!("{}.{ext}", id.display()));
            tool(
                Command::new("openssl")
                    .args(["pkcs12", "-export", "-passout", "pass:", "-in"])
                    .arg(with("pem"))
                    .arg("-inkey")
                    .arg(with("key"))
                    .arg("-out")
                    .arg(&p12),
                "openssl pkcs12 -export",
            );
            tool(
                Command::new("pk12util")
                    .args(["-d", &sql, "-W", "", "-i"])
                    .arg(&p12),
                "pk12util -i",
            );
        }
        let envs: HashMap<String, String> = [
            ("HOME".to_string(), home.path().display().to_string()),
            // No desktop session bus here: keep Chromium from looking.
            (
                "DBUS_SESSION_BUS_ADDRESS".to_string(),
                "disabled:".to_string(),
            ),
        ]
        .into();
        let profile = home.path().join("profile");
        let chrome = Chrome::new(LaunchOptions {
            headless: true,
            sandbox: false,
            path: Some(chromium),
            window_size: Some((1280, 1100)),
            user_data_dir: Some(profile),
            process_envs: Some(envs),
            idle_browser_timeout: Duration::from_secs(120),
            ..LaunchOptions::default()
        })
        .expect("Chromium starts");
        let tab = chrome.new_tab().expect("a tab");
        Browser {
            chrome: Some(chrome),
            tab,
            home: home.keep(),
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn open(&self, url: &str) {
        self.tab.navigate_to(url).expect("navigate");
        self.tab.wait_until_navigated().expect("page loads");
    }

    /// Opens `url`, which must fail to load (a refused TLS handshake, say),
    /// and returns Chromium's error (`net::ERR_…`).
    pub fn open_fails(&self, url: &str) -> String {
        match self.tab.navigate_to(url) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{url} loaded:\n{}", self.text()),
        }
    }

    /// The text of the page's body.
    pub fn text(&self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
    }

    /// The page's HTML.
    pub fn html(&self) -> String {
        self.eval("document.documentElement.outerHTML")
    }

    /// The text of the first element matching `selector`, or "" if none.
    pub fn text_of(&self, selector: &str) -> String {
        self.eval(&format!(
            "(e => e ? e.innerText : '')(document.querySelector({}))",
            serde_json::to_string(selector).unwrap()
        ))
    }

    /// A JavaScript expression's value as a string (for reading only: the
    /// console itself runs no script).
    pub fn eval(&self, js: &str) -> String {
        let v = self.tab.evaluate(js, false).expect("evaluate").value;
        match v {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }

    /// Clicks the element matching `selector` and waits for the page it
    /// leads to.
    pub fn click(&self, selector: &str) {
        self.tab
            .wait_for_element(selector)
            .expect("element")
            .click()
            .expect("click");
        self.tab.wait_until_navigated().expect("page loads");
    }

    /// Types `text` into the input matching `selector` (emptied first).
    pub fn fill(&self, selector: &str, text: &str) {
        self.eval(&format!(
            "(e => {{ e.value = ''; return 'ok'; }})(document.querySelector({}))",
            serde_json::to_string(selector).unwrap()
        ));
        self.tab
            .wait_for_element(selector)
            .expect("element")
            .click()
            .expect("click");
        self.tab.type_str(text).expect("type");
    }

    /// Waits until the page's text contains `needle` (the page may refresh
    /// itself meanwhile).
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text();
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "page never said {needle:?}; it says:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Saves a PNG of the whole page to `path`.
    pub fn screenshot(&self, path: &Path) {
        use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// The browser's version, for messages.
    pub fn version(&self) -> String {
        self.chrome
            .as_ref()
            .and_then(|c| c.get_version().ok())
            .map(|v| v.product)
            .unwrap_or_default()
    }
}
