//! The browser chat's page in a real headless Chromium against the real `chat`
//! binary: pages and a telnet user chatting, a private message, the history on reload,
//! a hostile name, a reconnect after the server closed the page's connection, and a
//! phone-sized screen. Screenshots go to `target/screenshots/chat-*.png`.

mod common;

use common::{chat_with_browsers, ChatClient};
use serde_json::{json, Value};
use switchboard::{ClientId, Gateway};
use switchboard_testkit::browser::Browser;
use switchboard_testkit::{Client, Deployment, WAIT};

/// The page of room `room` of deployment `d`.
fn page_url(d: &Deployment, room: &str) -> String {
    format!("http://{}/?room_id={room}", d.listener_addr("browser"))
}

/// Opens the page, logs in as `name` and waits until the page says it is online.
async fn join(page: &Browser, url: &str, name: &str) {
    page.goto(url).await;
    page.wait_until("!document.getElementById('login').hidden")
        .await;
    page.fill("#name", name).await;
    page.click("#login button").await;
    online(page).await;
}

async fn online(page: &Browser) {
    page.wait_until("document.getElementById('status').textContent === 'online'")
        .await;
}

/// The member list as the page shows it.
async fn members(page: &Browser) -> Vec<String> {
    page.eval_as("return [...document.querySelectorAll('#members button')].map(b => b.textContent)")
        .await
}

/// Waits until some message of the page contains `text`.
async fn wait_message(page: &Browser, text: &str) {
    let script = "return [...document.querySelectorAll('#messages li')].some(li => li.textContent.includes(arguments[0]))";
    let deadline = tokio::time::Instant::now() + WAIT;
    while page.eval_with(script, vec![json!(text)]).await != json!(true) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message with {text:?} within {WAIT:?}; the page says:\n{}",
            page.describe().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The texts of the page's messages.
async fn messages(page: &Browser) -> Vec<String> {
    page.eval_as("return [...document.querySelectorAll('#messages li')].map(li => li.textContent)")
        .await
}

async fn say(page: &Browser, text: &str) {
    page.fill("#text", text).await;
    page.click("#say button").await;
}

/// The id of the browser logged in as `name` in `room`, from the gateways.
async fn id_of(api: &Gateway, room: &str, name: &str) -> ClientId {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sessions = api.sessions(Some(&format!("room:{room}"))).await.unwrap();
        if let Some((id, _)) = sessions
            .iter()
            .find(|(_, s)| s.get("name") == Some(&Value::from(name)))
        {
            return *id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is not in room {room}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_and_a_telnet_user_chat_privately_too_and_a_reload_shows_the_history() {
    let test = "two_pages_and_a_telnet_user_chat";
    let Some(ann) = Browser::start_or_skip(test).await else {
        return;
    };
    let Some(bob) = Browser::start_or_skip(test).await else {
        return;
    };
    let d = Deployment::start(chat_with_browsers());
    let api = d.api().await;
    let url = page_url(&d, "1");
    let mut tess = Client::connect(d.addr()).await;
    let t = tess.login("tess").await;

    join(&ann, &url, "ann").await;
    let a = id_of(&api, "1", "ann").await;
    tess.expect_next(&format!("ann[{a}] come")).await;
    join(&bob, &url, "bob").await;
    let b = id_of(&api, "1", "bob").await;
    tess.expect_next(&format!("bob[{b}] come")).await;
    ann.wait_until("document.querySelectorAll('#members button').length === 3")
        .await;
    let mut seen = members(&ann).await;
    seen.sort();
    assert_eq!(seen, ["ann (you)", "bob", "tess"]);

    // In public: a page to everybody, telnet to everybody.
    say(&ann, "hello from ann").await;
    wait_message(&bob, "hello from ann").await;
    tess.expect_next(&format!("ann[{a}] said :hello from ann"))
        .await;
    tess.send("hello from telnet").await;
    tess.expect_next(&format!("tess[{t}] said :hello from telnet"))
        .await;
    wait_message(&ann, "hello from telnet").await;
    wait_message(&bob, "hello from telnet").await;

    // In private: ann chooses bob in the member list; only bob gets it.
    ann.click(&format!("#members button[data-id='{b}']")).await;
    assert_eq!(
        ann.eval("return document.getElementById('to').value").await,
        json!(b.to_string())
    );
    say(&ann, "just for bob").await;
    wait_message(&bob, "privately to you:just for bob").await;
    wait_message(&ann, "privately to bob:just for bob").await;
    // The telnet user's next line is the one after it: the private one passed it by.
    ann.click("#members button.chosen").await; // back to everybody
    say(&ann, "public again").await;
    tess.expect_next(&format!("ann[{a}] said :public again"))
        .await;
    // bob → the telnet user, privately.
    bob.click(&format!("#members button[data-id='{t}']")).await;
    say(&bob, "psst tess").await;
    tess.expect_next(&format!("bob[{b}] said to You :psst tess"))
        .await;
    wait_message(&bob, "privately to tess:psst tess").await;
    let anns = messages(&ann).await;
    assert!(!anns.iter().any(|m| m.contains("psst tess")), "{anns:?}");
    wait_message(&ann, "public again").await;
    let laptop = ann.screenshot("chat-laptop").await;
    eprintln!("screenshot: {}", laptop.display());

    // bob reloads: a new connection, the history of the room, the same name offered.
    bob.reload().await;
    bob.wait_until("!document.getElementById('login').hidden")
        .await;
    assert_eq!(
        bob.eval("return document.getElementById('name').value")
            .await,
        json!("bob")
    );
    bob.click("#login button").await;
    online(&bob).await;
    let history: Vec<String> = bob
        .eval_as("return [...document.querySelectorAll('#messages li.history')].map(li => li.textContent)")
        .await;
    let said: Vec<bool> = ["hello from ann", "hello from telnet", "public again"]
        .iter()
        .map(|w| history.iter().any(|h| h.contains(w)))
        .collect();
    assert_eq!(said, [true, true, true], "{history:?}");
    assert!(
        !history.iter().any(|h| h.contains("just for bob")),
        "{history:?}"
    );
    bob.screenshot("chat-laptop-history").await;
    ann.close().await;
    bob.close().await;
    api.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_for_a_name_shows_as_text_and_runs_nothing() {
    let test = "a_script_for_a_name_shows_as_text_and_runs_nothing";
    let Some(evil) = Browser::start_or_skip(test).await else {
        return;
    };
    let Some(other) = Browser::start_or_skip(test).await else {
        return;
    };
    let d = Deployment::start(chat_with_browsers());
    let url = page_url(&d, "1");
    let name = "<script>alert(1)</script>";
    join(&other, &url, "watcher").await;
    join(&evil, &url, name).await;
    let bad = "<img src=x onerror=alert(2)> & \"quotes\" 'too'";
    say(&evil, bad).await;
    for page in [&evil, &other] {
        wait_message(page, bad).await;
        let listed = members(page).await;
        assert!(listed.iter().any(|m| m.starts_with(name)), "{listed:?}");
        assert_eq!(page.dialog().await, None, "a dialog opened");
        // Nothing of it became an element.
        let planted: u64 = page
            .eval_as("return document.querySelectorAll('#messages img, #messages script, #members script').length")
            .await;
        assert_eq!(planted, 0);
        let shown: String = page
            .eval_as("return document.getElementById('messages').textContent")
            .await;
        assert!(shown.contains(name), "{shown}");
    }
    wait_message(&other, &format!("{name} joined.")).await;
    evil.screenshot("chat-hostile-name").await;
    evil.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_connection_the_server_closes_reconnects_and_is_back_in_the_room() {
    let test = "a_page_whose_connection_the_server_closes_reconnects";
    let Some(rita) = Browser::start_or_skip(test).await else {
        return;
    };
    let Some(sam) = Browser::start_or_skip(test).await else {
        return;
    };
    let d = Deployment::start(chat_with_browsers());
    let api = d.api().await;
    let url = page_url(&d, "7");
    join(&sam, &url, "sam").await;
    join(&rita, &url, "rita").await;
    let first = id_of(&api, "7", "rita").await;
    sam.wait_until("document.querySelectorAll('#members button').length === 2")
        .await;

    api.close_client(first, None).await.unwrap();
    // sam sees her leave and come back; her page comes back online by itself with a
    // new connection, in the same room, with the same name.
    wait_message(&sam, "rita left.").await;
    online(&rita).await;
    wait_message(&rita, "Reconnected as rita.").await;
    let second = id_of(&api, "7", "rita").await;
    assert_ne!(first, second);
    wait_message(&sam, "rita joined.").await;
    let mut seen = members(&sam).await;
    seen.sort();
    assert_eq!(seen, ["rita", "sam (you)"]);
    let mut hers = members(&rita).await;
    hers.sort();
    assert_eq!(hers, ["rita (you)", "sam"]);
    // And she chats on.
    say(&rita, "back again").await;
    wait_message(&sam, "back again").await;
    rita.close().await;
    sam.close().await;
    api.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_fits_a_375_pixel_phone() {
    let test = "the_page_fits_a_375_pixel_phone";
    let Some(phone) = Browser::start_or_skip(test).await else {
        return;
    };
    let Some(laptop) = Browser::start_or_skip(test).await else {
        return;
    };
    let d = Deployment::start(chat_with_browsers());
    let url = page_url(&d, "1");
    let mut telnet = Client::connect(d.addr()).await;
    telnet.login("terminal-tim").await;
    phone.set_size(375, 740).await;
    phone.goto(&url).await;
    phone
        .wait_until("!document.getElementById('login').hidden")
        .await;
    phone.screenshot("chat-phone-login").await;
    phone.fill("#name", "pia").await;
    phone.click("#login button").await;
    online(&phone).await;
    join(&laptop, &url, "lars with a rather long name").await;
    say(&laptop, "Hi Pia! A longer line, to see how it wraps on a narrow screen: https://example.invalid/a/very/long/path/that/does/not/break/by/itself").await;
    telnet.send("hello from the terminal").await;
    // Enter sends, so a message of two lines is typed with Shift+Enter; set it.
    phone
        .eval_with(
            "document.getElementById('text').value = arguments[0]",
            vec![json!("Hi both!\nSecond line.")],
        )
        .await;
    phone.click("#say button").await;
    wait_message(&phone, "hello from the terminal").await;
    wait_message(&laptop, "Hi both!\nSecond line.").await;
    wait_message(&phone, "Hi both!\nSecond line.").await;

    // Nothing wider than the screen; members above the messages, the input below.
    let layout: Value = phone
        .eval(
            "const r = (s) => document.querySelector(s).getBoundingClientRect();
             return { width: innerWidth, scroll: document.documentElement.scrollWidth,
                      members: r('.members').bottom, messages: r('.messages').top,
                      say: r('.say').top, sayBottom: r('.say').bottom, height: innerHeight };",
        )
        .await;
    assert_eq!(layout["width"], 375, "{layout}");
    assert!(
        layout["scroll"].as_f64() <= Some(375.0),
        "horizontal overflow: {layout}"
    );
    assert!(
        layout["members"].as_f64() <= layout["messages"].as_f64(),
        "{layout}"
    );
    assert!(
        layout["messages"].as_f64() < layout["say"].as_f64(),
        "{layout}"
    );
    assert!(
        layout["sayBottom"].as_f64() <= layout["height"].as_f64(),
        "{layout}"
    );
    phone.screenshot("chat-phone").await;
    laptop.screenshot("chat-laptop-with-phone-user").await;
    phone.close().await;
    laptop.close().await;
}
