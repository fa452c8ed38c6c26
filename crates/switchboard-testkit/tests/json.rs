//! `json` listeners (Workerman's JsonProtocol) end to end, byte for byte on the wire.

mod common;

use common::*;
use switchboard_testkit::{Deployment, Listener, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A deployment with one `json` listener, its messages limited to 64 bytes.
fn deployment() -> Deployment {
    Deployment::start(options().listener(Listener::new("docs", "json").keys("max_message = 64")))
}

/// Reads everything until the gateway closes the connection.
async fn rest(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    read_to_end(s, &mut got).await;
    got
}

/// A json frame: the total length (its own 4 bytes included), then the body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_is_byte_exact_workermans_and_so_is_the_reply() {
    let d = deployment();
    let mut s = tcp(d.addr()).await;
    let sent: &[u8] = b"\x00\x00\x00\x0f{\"type\":1}\n";
    assert_eq!(sent, frame(b"{\"type\":1}\n").as_slice());
    // In two writes, cut inside the header: framing does not depend on reads.
    s.write_all(&sent[..2]).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.write_all(&sent[2..]).await.unwrap();
    let mut reply = [0u8; 15];
    tokio::time::timeout(WAIT, s.read_exact(&mut reply))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&reply[..], sent, "the echo is framed the same way");
    // Two frames in one write come back as two.
    let mut two = frame(b"[1,2]");
    two.extend(frame(b"\"x\""));
    s.write_all(&two).await.unwrap();
    let mut back = vec![0u8; two.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("both echoes in time")
        .unwrap();
    assert_eq!(back, two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_gets_an_error_frame_and_is_closed() {
    let d = deployment();
    let mut s = tcp(d.addr()).await;
    let local = s.local_addr().unwrap();
    // Only the header: the limit is checked before the body is buffered.
    s.write_all(&(4u32 + 100).to_be_bytes()).await.unwrap();
    let got = rest(&mut s).await;
    assert_eq!(
        got,
        frame(b"{\"error\":\"frame of 100 bytes exceeds the limit of 64 bytes\"}")
    );
    assert!(
        fixture_events(&d, local)
            .iter()
            .all(|e| !e.starts_with("message")),
        "nothing reached the application"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_gets_one_error_frame_and_is_closed() {
    let d = deployment();
    let mut s = tcp(d.addr()).await;
    let local = s.local_addr().unwrap();
    let echo = frame(b"{\"ok\":true}");
    s.write_all(&echo).await.unwrap();
    let mut back = vec![0u8; echo.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(back, echo);
    // A bad body, and a good frame after it that must never be read.
    let mut sent = frame(b"not json");
    sent.extend(frame(b"{\"never\":\"read\"}"));
    s.write_all(&sent).await.unwrap();
    // Exactly one error frame, then the end.
    let got = rest(&mut s).await;
    let len = u32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
    assert_eq!(
        len,
        got.len(),
        "one frame: {:?}",
        String::from_utf8_lossy(&got)
    );
    let error = String::from_utf8_lossy(&got[4..]);
    assert!(
        error.starts_with("{\"error\":\"frame body is not JSON: "),
        "{error}"
    );
    wait_event(&d, "close", local).await;
    let messages = fixture_events(&d, local)
        .into_iter()
        .filter(|e| e.starts_with("message"))
        .count();
    assert_eq!(messages, 1, "only the first frame reached the application");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_below_4_is_closed() {
    let d = deployment();
    for total in [0u32, 3] {
        let mut s = tcp(d.addr()).await;
        s.write_all(&total.to_be_bytes()).await.unwrap();
        let got = rest(&mut s).await;
        assert_eq!(
            got,
            frame(
                format!(
                    "{{\"error\":\"frame length {total} is less than the 4 bytes of its own header\"}}"
                )
                .as_bytes()
            ),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // The listener goes on serving.
    let mut s = tcp(d.addr()).await;
    s.write_all(&frame(b"1")).await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(back[..], frame(b"1")[..]);
}
