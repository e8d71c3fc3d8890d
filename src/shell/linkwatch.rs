//! Watches the daemon's interface over rtnetlink's link multicast group. Taking the interface
//! down and up again (`ip link set dhtun0 down; ip link set dhtun0 up`, as admins and network
//! managers do) makes the kernel drop its IPv6 addresses and every route through it; the
//! daemon learns here that the link came back up, and puts back what is its own (see
//! `reload::restore`).

use futures::StreamExt;
use rtnetlink::constants::RTMGRP_LINK;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use std::io;
use tokio::sync::mpsc;

/// Tells the event loop each time the watched link goes from down to up.
pub struct LinkWatch {
    came_up: mpsc::Receiver<()>,
}

impl LinkWatch {
    /// Starts watching link `index` on the current tokio runtime.
    pub fn start(index: u32) -> io::Result<Self> {
        let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        tokio::spawn(connection);
        // One pending notice is enough: a restore puts everything back, however many times the
        // link flapped before it ran.
        let (tx, came_up) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut was_up = true;
            while let Some((message, _)) = messages.next().await {
                let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
                    message.payload
                else {
                    continue;
                };
                if link.header.index != index {
                    continue;
                }
                let up = link.header.flags.contains(LinkFlags::Up);
                if up && !was_up {
                    let _ = tx.try_send(());
                }
                was_up = up;
            }
        });
        Ok(Self { came_up })
    }

    /// Waits until the link has come back up; None if the watch ended.
    pub async fn came_up(&mut self) -> Option<()> {
        self.came_up.recv().await
    }
}

/// The next time `watch` sees the link come back up; never, without a watch.
pub async fn next_came_up(watch: &mut Option<LinkWatch>) -> Option<()> {
    match watch {
        Some(watch) => watch.came_up().await,
        None => std::future::pending().await,
    }
}
