//! The request id on every response to the client, whoever wrote it.
//!
//! `request_filter` decides the id (`policy::request_id`) and hands it to this pingora
//! downstream module; the module adds `X-Request-Id` to every response head written
//! through the session: proxied and cached responses and ecluse's own pages alike, so no
//! answer path can forget it.

use std::any::Any;

use async_trait::async_trait;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora_error::Result;
use pingora_http::ResponseHeader;

use crate::policy::request_id::HEADER;

/// Per-request state of the module: the id once decided.
#[derive(Default)]
pub struct RequestIdHeader {
    id: Option<http::HeaderValue>,
}

impl RequestIdHeader {
    /// Set the id every later response head carries.
    pub fn set(&mut self, id: &str) {
        // `policy::request_id` only keeps or makes header-safe ASCII.
        self.id = http::HeaderValue::from_str(id).ok();
    }
}

#[async_trait]
impl HttpModule for RequestIdHeader {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> Result<()> {
        if let Some(id) = &self.id {
            // Replaces what the origin said: the id in our log is the one the client sees.
            resp.insert_header(HEADER, id.clone())?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

pub struct RequestIdBuilder;

impl HttpModuleBuilder for RequestIdBuilder {
    fn init(&self) -> Module {
        Box::new(RequestIdHeader::default())
    }
}
