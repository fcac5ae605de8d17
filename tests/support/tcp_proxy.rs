//! A loopback TCP proxy that a test can cut and restore, to take a database
//! "down" under a running service without touching the database server.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex,
    task::JoinHandle,
};

/// Forwards `127.0.0.1:<port>` to a target while up.
pub(crate) struct TcpProxy {
    pub(crate) address: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Starts forwarding a fresh loopback port to `target`.
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            address: listener.local_addr().unwrap(),
            target,
            tasks: Arc::default(),
        };
        proxy.serve(listener).await;
        proxy
    }

    async fn serve(&self, listener: TcpListener) {
        let (target, tasks) = (self.target, self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().await.push(pipe);
            }
        });
        self.tasks.lock().await.push(accept);
    }

    /// Refuses new connections and resets the open ones.
    pub(crate) async fn cut(&self) {
        for task in self.tasks.lock().await.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts and forwards again, on the same port.
    pub(crate) async fn restore(&self) {
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.serve(listener).await;
    }

    /// `url` (a PostgreSQL URL on 127.0.0.1:5432 or localhost:5432) routed
    /// through this proxy.
    pub(crate) fn route(&self, url: &str) -> String {
        let port = self.address.port();
        url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{port}"), 1)
            .replacen("localhost:5432", &format!("127.0.0.1:{port}"), 1)
    }
}
