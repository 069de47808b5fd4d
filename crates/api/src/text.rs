//! Bounds on the free text the API accepts and stores (descriptions, paths,
//! prefixes, plan ids, …): each field has a size limit, and a value past it
//! is refused with a 400 that names the field and the limit. The same
//! limits are declared in the OpenAPI document (`maxLength`).

use crate::ApiError;

/// A token's description.
pub(crate) const MAX_DESCRIPTION_BYTES: usize = 256;
/// A request path a schedule, trigger or event hands the function.
pub(crate) const MAX_PATH_BYTES: usize = 1024;
/// A schedule's expression.
pub(crate) const MAX_SCHEDULE_EXPR_BYTES: usize = 256;
/// A time zone: a fixed offset or a tz database name.
pub(crate) const MAX_TZ_BYTES: usize = 64;
/// A price plan's id.
pub(crate) const MAX_PLAN_ID_BYTES: usize = 64;
/// The comma-separated hosts a function may call.
pub(crate) const MAX_ALLOWED_HOSTS_BYTES: usize = 8192;
/// The comma-separated route claims of a deploy.
pub(crate) const MAX_ROUTES_BYTES: usize = 8192;
/// A short setting written as text: `keep_alive`, `provisioned`, `canary`.
pub(crate) const MAX_SETTING_BYTES: usize = 128;

/// Refuses `value` for `field` when it is longer than `max` bytes.
pub(crate) fn check(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::BadRequest(format!(
            "`{field}` is {} bytes long; it may be at most {max} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// [`check`] for an optional field.
pub(crate) fn check_opt(field: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    value.map_or(Ok(()), |v| check(field, v, max))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_value_past_its_limit_is_refused_naming_the_field_and_the_limit() {
        assert!(check("description", &"x".repeat(256), 256).is_ok());
        let message = check("description", &"x".repeat(257), 256)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "`description` is 257 bytes long; it may be at most 256 bytes"
        );
        assert!(check_opt("path", None, 1).is_ok());
        assert!(check_opt("path", Some("//"), 1).is_err());
    }
}
