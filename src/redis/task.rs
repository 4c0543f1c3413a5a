//! The background task of one shared breaker: it publishes the breaker's counts and transitions,
//! reads the fleet's, and applies them (`member.rs`). Nothing here runs on a call's path; the
//! task talks to the breaker through the crate-internal hooks of `state/remote.rs`.

use std::sync::Arc;

use futures::StreamExt;
use redis::aio::PubSubStream;

use super::link::{Link, Window, next, sleep_until};
use super::member::Member;
use crate::state::Breaker;

pub(super) struct Task {
    pub(super) breaker: Arc<Breaker>,
    pub(super) link: Link,
    pub(super) window: Window,
    pub(super) member: Member,
}

impl Task {
    pub(super) async fn run(mut self) {
        let mut events = self.breaker.subscribe();
        let mut ticks = tokio::time::interval(self.link.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages: Option<PubSubStream> = None;
        loop {
            let claim_at = self.member.claim_at(&self.link, &self.breaker);
            tokio::select! {
                _ = ticks.tick() => {
                    self.tick().await;
                    if messages.is_none() && self.link.reachable() {
                        let channel = self.member.keys.channel();
                        messages = self.link.subscribe(channel, false).await;
                        if messages.is_some() {
                            // Whatever was published while unsubscribed is in the state key.
                            self.tick().await;
                        }
                    }
                }
                event = events.next() => match event {
                    Some(_) => self.member.local(&mut self.link, &self.breaker).await,
                    None => return,
                },
                message = next(&mut messages) => match message {
                    Some(message) => {
                        self.member.message(&self.link, &self.breaker, message.get_payload_bytes());
                    }
                    None => messages = None,
                },
                _ = sleep_until(claim_at), if claim_at.is_some() => {
                    self.member.claim(&mut self.link, &self.breaker).await;
                }
            }
        }
    }

    /// A tick: publishes the counts since the last one, reads the fleet's state and window, and
    /// follows them.
    async fn tick(&mut self) {
        let (link, breaker, member) = (&mut self.link, &*self.breaker, &mut self.member);
        member.local(link, breaker).await;
        let args = member.sync_args(link, breaker);
        if let Some(reply) = link.sync(self.window, &[args]).await {
            member.synced(link, breaker, &reply, 1).await;
        }
    }
}
