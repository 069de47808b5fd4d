//! Request bodies read whole, up to a cap: past it the rest is read and
//! thrown away (up to a bound), so that a client still sending hears the
//! answer instead of a reset connection.

use axum::body::Body;

use crate::ApiError;

/// Reads a body of at most `cap` bytes (`Err(None)`: larger; `Err(Some)`:
/// the upload failed), discarding the excess so the client hears the answer.
pub(crate) async fn read_capped(body: Body, cap: usize) -> Result<bytes::Bytes, Option<ApiError>> {
    use http_body_util::BodyExt as _;
    const DISCARD_AT_MOST: usize = 1 << 30;
    let mut body = body;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Some(ApiError::BadRequest(format!("the upload failed: {e}"))))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= cap {
                kept.extend_from_slice(&data);
            } else if seen > DISCARD_AT_MOST {
                break;
            }
        }
    }
    if seen > cap {
        return Err(None);
    }
    Ok(kept.into())
}
