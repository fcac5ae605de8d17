//! The real sync-service and gateway, in this test process on 127.0.0.1:0,
//! over a fresh database, with bearer tokens as production runs them.

#[path = "../../../tests/support/test_db.rs"]
mod test_db;

use std::net::SocketAddr;

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub(crate) use test_db::{Backend, TestDb};

/// The gateway's signing secret.
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The gateway's token (write role).
pub(crate) const WRITE_TOKEN: &str = "bench-write-token-3kQ9";
/// The bench's token (read role).
pub(crate) const READ_TOKEN: &str = "bench-read-token-7Zp2";

/// A running stack; stopped when dropped.
pub(crate) struct Stack {
    _db: TestDb,
    pub(crate) gateway: SocketAddr,
    pub(crate) sync: SocketAddr,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    pub(crate) async fn start(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let (mut stops, mut tasks) = (Vec::new(), Vec::new());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sync = listener.local_addr().unwrap();
        let mut config = clerk_sync_service::Config::with_database(db.url.clone());
        {
            use clerk_sync_service::auth::TokenList;
            config.write_tokens = TokenList::parse(WRITE_TOKEN).unwrap();
            config.read_tokens = TokenList::parse(READ_TOKEN).unwrap();
        }
        config.health_check_interval_ms = 50;
        config.database_max_connections = 5;
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(async move {
            clerk_sync_service::run(listener, &config, async {
                let _ = stopped.await;
            })
            .await
            .expect("sync-service ended well");
        }));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        let mut config = clerk_sync_gateway::Config::new(
            SECRET.parse().unwrap(),
            vec![format!("http://{sync}").parse().unwrap()],
        );
        config.sync_service.token =
            Some(clerk_sync_common::settings::BearerToken::parse(WRITE_TOKEN).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(async move {
            clerk_sync_gateway::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("gateway ended well");
        }));

        let stack = Self {
            _db: db,
            gateway,
            sync,
            stops,
            tasks,
        };
        stack.wait_until_ready().await;
        stack
    }

    /// Waits until the gateway's /readyz answers 200.
    async fn wait_until_ready(&self) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for _ in 0..200 {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.gateway).await {
                let request = format!(
                    "GET /readyz HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                    self.gateway
                );
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).await.is_ok()
                    && stream.read_to_string(&mut answer).await.is_ok()
                    && answer.starts_with("HTTP/1.1 200")
                {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the stack never became ready");
    }

    /// Stops the gateway, then the sync-service; both must end well.
    pub(crate) async fn stop(mut self) {
        for (stop, task) in self.stops.drain(..).rev().zip(self.tasks.drain(..).rev()) {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }
}
