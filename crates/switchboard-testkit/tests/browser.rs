//! The browser helper against a real headless Chromium: a page, a script, a dialog,
//! a window size, a screenshot.

use serde_json::json;
use switchboard_testkit::browser::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_driven_read_and_photographed() {
    let Some(page) = Browser::start_or_skip("a_page_is_driven_read_and_photographed").await else {
        return;
    };
    page.goto(
        "data:text/html,<title>kit</title><input id=name><button id=go \
         onclick=\"document.title='hi '+document.getElementById('name').value\">go</button>\
         <button id=alert onclick=\"alert('boo')\">alert</button>",
    )
    .await;
    assert_eq!(page.eval("return document.title").await, json!("kit"));
    page.fill("#name", "ann").await;
    page.click("#go").await;
    page.wait_until("document.title === 'hi ann'").await;
    assert_eq!(page.dialog().await, None);
    page.click("#alert").await;
    assert_eq!(page.dialog().await.as_deref(), Some("boo"));
    page.client().accept_alert().await.unwrap();
    assert_eq!(page.dialog().await, None);

    page.set_size(375, 700).await;
    let size: Vec<u32> = page.eval_as("return [innerWidth, innerHeight]").await;
    assert_eq!(size, [375, 700]);
    let path = page.screenshot("testkit-browser").await;
    let png = std::fs::read(&path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert!(
        path.ends_with("screenshots/testkit-browser.png"),
        "{}",
        path.display()
    );
    page.close().await;
}
