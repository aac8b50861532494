//! A receiver of Alertmanager's webhook format for the alert tests: keeps every message
//! posted to it, decoded as JSON, and answers the first `refuse_first` posts 503 so that the
//! agent's retry is exercised.
use std::{
    io::{BufReader, Write as _},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use anyhow::Result;
use serde_json::Value;

use crate::net::read_post;

/// The running receiver (a thread; it lives as long as the test process).
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    pub port: u16,
    messages: Arc<Mutex<Vec<Value>>>,
    refused: Arc<AtomicUsize>,
}

impl WebhookReceiver {
    pub fn start(refuse_first: usize) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (sink, count) = (messages.clone(), refused.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (sink, count) = (sink.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &sink, &count, refuse_first);
                });
            }
        });
        Ok(Self {
            port,
            messages,
            refused,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every message accepted (answered 200), in arrival order.
    pub fn messages(&self) -> Vec<Value> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Posts answered 503.
    pub fn refused(&self) -> usize {
        self.refused.load(Relaxed)
    }
}

fn serve(
    stream: std::net::TcpStream,
    sink: &Mutex<Vec<Value>>,
    refused: &AtomicUsize,
    refuse_first: usize,
) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some((_path, body)) = read_post(&mut reader)? {
        let refuse = refused
            .fetch_update(Relaxed, Relaxed, |n| (n < refuse_first).then_some(n + 1))
            .is_ok();
        if refuse {
            writer.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        let doc = serde_json::from_slice(&body).unwrap_or(Value::Null);
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(doc);
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
    Ok(())
}
