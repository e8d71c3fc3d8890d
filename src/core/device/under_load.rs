//! The device's half of handshake cookies: answering an initiation with a cookie reply when we
//! are under load, taking a cookie a peer sent us, and putting it in our next initiations' mac2.

use super::{Device, NetworkAction};
use crate::core::cookie::{self, COOKIE_NONCE_BYTES};
use crate::core::limits::COOKIE_USE_LIFETIME;
use crate::core::peer::{Peer, PeerId};
use crate::core::stats::DropReason;
use crate::core::wire::{self, CookieReply, Initiation, COOKIE_REPLY_LEN};
use core::time::Duration;
use rand_chacha::rand_core::RngCore;
use std::net::SocketAddr;

impl Device {
    /// Answers `message` with a cookie reply for `from` instead of doing the handshake.
    pub(super) fn send_cookie(
        &mut self,
        from: SocketAddr,
        message: Initiation<'_>,
        out: &mut [u8],
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        let reply: &mut [u8; COOKIE_REPLY_LEN] = out
            .get_mut(..COOKIE_REPLY_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or((DropReason::TooLarge, None))?;
        let mut nonce = [0u8; COOKIE_NONCE_BYTES];
        self.rng.fill_bytes(&mut nonce);
        self.cookies
            .write_reply(from, message.sender(), message.mac1(), nonce, reply);
        // Not a handshake: counted with the drops so an operator sees the load.
        self.drops.count(DropReason::UnderLoad);
        Ok(NetworkAction::WriteToNetwork {
            to: from,
            len: COOKIE_REPLY_LEN,
        })
    }

    /// A peer under load sent us a cookie for our pending initiation: keep it for the next
    /// initiation, which the retry timer sends.
    pub(super) fn on_cookie_reply(
        &mut self,
        message: CookieReply<'_>,
        now: Duration,
    ) -> Result<NetworkAction, (DropReason, Option<PeerId>)> {
        let local_index = message.receiver();
        let (id, peer) = self.peer_by_index(local_index)?;
        if peer.handshake.as_ref().map(|h| h.local_index) != Some(local_index) {
            return Err((DropReason::UnknownPeer, Some(id)));
        }
        let [_, mac1, _] = wire::initiation_layout();
        let cookie = cookie::open_reply(
            &peer.config.public_key,
            &peer.initiation_copy[mac1],
            message.nonce(),
            message.sealed_cookie(),
            message.tag(),
            now,
        )
        .ok_or((DropReason::Unauthenticated, Some(id)))?;
        peer.cookie = Some(cookie);
        Ok(NetworkAction::Consumed)
    }
}

/// Fills mac2 of the initiation in `buf` when we hold a fresh cookie from this peer.
pub(super) fn stamp_mac2(peer: &Peer, buf: &mut [u8; wire::INITIATION_LEN], now: Duration) {
    let Some(cookie) = peer.cookie else {
        return;
    };
    if now.saturating_sub(cookie.received_at) >= COOKIE_USE_LIFETIME {
        return;
    }
    let [_, _, mac2] = wire::initiation_layout();
    let tag = cookie::mac2(&cookie, &buf[..mac2.start]);
    buf[mac2].copy_from_slice(&tag);
}
