//! What the examples share (see the `[[example]]` entries for the examples themselves).

pub mod replay;

use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An axum server on loopback, stopped by [`stop`](Server::stop).
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    /// Serves `app` on a free port of loopback.
    pub async fn start(app: Router) -> io::Result<Server> {
        Server::start_on("127.0.0.1:0", app).await
    }

    /// Serves `app` on `addr` (to restart a server where it was).
    pub async fn start_on(addr: impl ToSocketAddrs, app: Router) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Server { addr, stop, task })
    }

    /// Stops accepting connections and waits for the requests in flight to end.
    pub async fn stop(self) -> io::Result<()> {
        let _ = self.stop.send(());
        self.task.await.map_err(io::Error::other)?
    }
}
