//! `DoGet` answered on the wire without copying result data into gRPC messages.
//!
//! tonic encodes each streamed message with prost into one buffer, so every result batch's
//! Arrow body was copied once more on its way out (5% of a scan's time over Flight, all of it
//! on the server's cores). [`FlightRouter`] sits in front of the generated
//! `FlightServiceServer`: it hands every call but `DoGet` to it unchanged, and answers `DoGet`
//! itself, through [`SluiceFlight::result_messages`] (the same call as `do_get`: credentials,
//! plain and Flight SQL tickets alike), writing each message as a small chunk — the gRPC
//! prefix, the header fields and the body's tag and length — followed by the body's pieces,
//! the result's Arrow buffers ([`crate::results`]), handed to HTTP/2 as they are. What a client
//! receives is byte for byte what tonic would have sent; errors, before the first message or
//! after, end the call with the same `grpc-status` trailers.
//!
//! # Example
//!
//! ```no_run
//! # async fn serve(flight: sluice_flight::SluiceFlight) -> Result<(), tonic::transport::Error> {
//! let addr = "127.0.0.1:50051".parse().expect("an address");
//! tonic::transport::Server::builder()
//!     .add_service(sluice_flight::wire::FlightRouter::new(flight))
//!     .serve(addr)
//!     .await
//! # }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use arrow_flight::Ticket;
use arrow_flight::flight_service_server::FlightServiceServer;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::results::{ResultMessage, ResultMessages};
use crate::server::{MAX_MESSAGE_BYTES, SluiceFlight};

/// The path of the call answered here.
const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";
/// `FlightData.data_body`'s field number.
const DATA_BODY_FIELD: u32 = 1000;

/// The Flight service as served: `DoGet` written here, every other call by tonic's generated
/// server.
#[derive(Debug, Clone)]
pub struct FlightRouter {
    flight: SluiceFlight,
    generated: FlightServiceServer<SluiceFlight>,
}

impl FlightRouter {
    pub fn new(flight: SluiceFlight) -> Self {
        Self {
            generated: flight.clone().into_server(),
            flight,
        }
    }
}

impl NamedService for FlightRouter {
    const NAME: &'static str = <FlightServiceServer<SluiceFlight> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for FlightRouter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != DO_GET {
            return self.generated.call(request);
        }
        let flight = self.flight.clone();
        Box::pin(async move { Ok(do_get(flight, request).await) })
    }
}

/// Runs a `DoGet` call: its answer, or the status it failed with.
async fn do_get(flight: SluiceFlight, request: http::Request<Body>) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let ticket = match read_ticket(body).await {
        Ok(ticket) => ticket,
        Err(status) => return status.into_http(),
    };
    let request = Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        ticket,
    );
    match flight.result_messages(request).await {
        Ok(response) => {
            let (metadata, messages, extensions) = response.into_parts();
            let mut answer = http::Response::new(Body::new(DoGetBody::new(messages)));
            *answer.headers_mut() = metadata.into_headers();
            answer.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            *answer.extensions_mut() = extensions;
            answer
        }
        Err(status) => status.into_http(),
    }
}

/// The one `Ticket` message a `DoGet` request carries.
async fn read_ticket(body: Body) -> Result<Ticket, Status> {
    let bytes = Limited::new(body, MAX_MESSAGE_BYTES)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the DoGet request: {e}")))?
        .to_bytes();
    let Some((&compressed, rest)) = bytes.split_first() else {
        return Err(Status::invalid_argument(
            "the DoGet request carries no ticket",
        ));
    };
    if compressed != 0 {
        return Err(Status::unimplemented(
            "compressed DoGet requests are not supported; send the ticket uncompressed",
        ));
    }
    let (length, message) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| Status::invalid_argument("the DoGet request is cut short"))?;
    if u32::from_be_bytes(*length) as usize != message.len() {
        return Err(Status::invalid_argument(
            "the DoGet request must carry exactly one ticket message",
        ));
    }
    Ticket::decode(message)
        .map_err(|e| Status::invalid_argument(format!("the DoGet ticket is not valid: {e}")))
}

/// A `DoGet` response body: each message as its framing and header fields, then its Arrow
/// body's pieces as they are; `grpc-status` trailers at the end.
struct DoGetBody {
    messages: ResultMessages,
    /// The chunks of the message being sent that have not gone yet.
    chunks: VecDeque<Bytes>,
    finished: bool,
}

impl DoGetBody {
    fn new(messages: ResultMessages) -> Self {
        Self {
            messages,
            chunks: VecDeque::new(),
            finished: false,
        }
    }

    fn end(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.finished = true;
        let mut trailers = http::HeaderMap::new();
        match status.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }
}

impl http_body::Body for DoGetBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            match ready!(self.messages.poll_next_unpin(cx)) {
                Some(Ok(message)) => match frame(message) {
                    Ok(chunks) => self.chunks = chunks.into(),
                    Err(status) => return self.end(&status),
                },
                Some(Err(status)) => return self.end(&status),
                None => return self.end(&Status::ok("")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.chunks.is_empty()
    }
}

/// Body pieces smaller than this (validity bitmaps, alignment padding) are copied in with
/// their neighbours: an HTTP/2 frame each would cost more than the copy.
const SMALL_PIECE: usize = 8 * 1024;

/// `message` as gRPC sends it, in chunks: the message prefix, every field but the body and the
/// body's key and length; then the body's pieces, large ones as they are.
fn frame(message: ResultMessage) -> Result<Vec<Bytes>, Status> {
    let body_len = message.body_len();
    let ResultMessage {
        data: mut fields,
        body,
    } = message;
    let data_body = std::mem::take(&mut fields.data_body);
    let body_key = if body_len == 0 {
        0
    } else {
        key_len(DATA_BODY_FIELD) + encoded_len_varint(body_len as u64)
    };
    let head_len = fields.encoded_len() + body_key;
    let message_len = head_len + body_len;
    if message_len > MAX_MESSAGE_BYTES {
        return Err(Status::out_of_range(format!(
            "a result message of {message_len} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
        )));
    }
    let mut small = BytesMut::with_capacity(5 + head_len + SMALL_PIECE);
    small.put_u8(0);
    small.put_u32(message_len as u32);
    fields
        .encode(&mut small)
        .map_err(|e| Status::internal(format!("encoding a result message: {e}")))?;
    if body_len > 0 {
        encode_key(DATA_BODY_FIELD, WireType::LengthDelimited, &mut small);
        encode_varint(body_len as u64, &mut small);
    }
    let mut chunks = Vec::with_capacity(body.len() + 2);
    for piece in std::iter::once(data_body).chain(body) {
        if piece.len() < SMALL_PIECE {
            small.extend_from_slice(&piece);
        } else {
            if !small.is_empty() {
                chunks.push(small.split().freeze());
            }
            chunks.push(piece);
        }
    }
    if !small.is_empty() {
        chunks.push(small.freeze());
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::{FlightData, FlightDescriptor};

    /// Every frame of `body`: the data concatenated, and the trailers.
    async fn drain(body: DoGetBody) -> (Vec<u8>, http::HeaderMap) {
        let collected = body.collect().await.expect("no body error");
        let trailers = collected.trailers().cloned().expect("trailers");
        (collected.to_bytes().to_vec(), trailers)
    }

    /// `data` as tonic's prost codec frames it.
    fn tonic_framing(data: &FlightData) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend((data.encoded_len() as u32).to_be_bytes());
        framed.extend(data.encode_to_vec());
        framed
    }

    fn message(body_bytes: usize) -> FlightData {
        FlightData {
            flight_descriptor: Some(FlightDescriptor::new_path(vec!["events".into()])),
            data_header: Bytes::from_static(b"header"),
            app_metadata: Bytes::from_static(b"meta"),
            data_body: Bytes::from(vec![7u8; body_bytes]),
        }
    }

    #[tokio::test]
    async fn messages_are_framed_as_tonic_frames_them() {
        let messages = vec![message(3), message(0), message(300_000)];
        let expected: Vec<u8> = messages.iter().flat_map(tonic_framing).collect();
        let body = DoGetBody::new(Box::pin(futures::stream::iter(
            messages.into_iter().map(|m| Ok(m.into())),
        )));
        let (sent, trailers) = drain(body).await;
        assert_eq!(sent, expected);
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[test]
    fn the_body_is_sent_as_its_own_bytes() {
        let data = message(1 << 20);
        let whole = data.clone();
        let pieces = vec![Bytes::from(vec![8u8; 1000]), Bytes::from(vec![9u8; 24])];
        let body_address = data.data_body.as_ptr();
        let message = ResultMessage { data, body: pieces };
        let expected = tonic_framing(&message.clone().into_flight_data());
        let chunks = frame(message).expect("framed");
        // The framing; the large body piece as it is; the two small ones copied together.
        assert_eq!(chunks.len(), 3);
        assert!(chunks[0].len() < 64);
        assert_eq!(chunks[1].as_ptr(), body_address);
        assert_eq!(chunks[2].len(), 1024);
        let sent: Vec<u8> = chunks.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(sent, expected);
        assert_ne!(sent, tonic_framing(&whole));
    }

    #[tokio::test]
    async fn an_error_after_rows_ends_the_call_with_its_status() {
        let stream = futures::stream::iter([
            Ok(message(10).into()),
            Err(Status::not_found("stream 'gone' does not exist")),
            Ok(message(10).into()),
        ]);
        let (sent, trailers) = drain(DoGetBody::new(Box::pin(stream))).await;
        assert_eq!(sent, tonic_framing(&message(10)));
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "stream 'gone' does not exist");
    }

    #[tokio::test]
    async fn a_ticket_is_read_from_its_grpc_framing() {
        let ticket = Ticket::new(b"{\"query\": \"SELECT 1\"}".to_vec());
        let mut framed = vec![0];
        framed.extend((ticket.encoded_len() as u32).to_be_bytes());
        framed.extend(ticket.encode_to_vec());
        let read = read_ticket(Body::new(http_body_util::Full::new(Bytes::from(
            framed.clone(),
        ))))
        .await
        .expect("a ticket");
        assert_eq!(read, ticket);

        framed[0] = 1;
        let compressed = read_ticket(Body::new(http_body_util::Full::new(Bytes::from(framed))))
            .await
            .expect_err("compressed");
        assert_eq!(compressed.code(), tonic::Code::Unimplemented);
        let short = read_ticket(Body::new(http_body_util::Full::new(Bytes::from_static(&[
            0, 0, 0, 0, 9, 1,
        ]))))
        .await
        .expect_err("cut short");
        assert_eq!(short.code(), tonic::Code::InvalidArgument);
        assert!(short.message().contains("exactly one ticket"), "{short}");
    }
}
