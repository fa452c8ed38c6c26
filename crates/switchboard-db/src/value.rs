//! Dynamic values and rows.
//!
//! [`Value`] is what gets bound to a `:name` parameter and what a column
//! decodes to when no Rust type was asked for. [`Row`] is one result row: the
//! column names (shared by every row of a result) and one `Value` per column.
//! Both deserialize into any serde type, which is how `query_as::<T>()` works.

use std::sync::Arc;

use serde::de::{self, value::SeqDeserializer, IntoDeserializer, Visitor};
use serde::Deserialize;

use crate::DbError;

/// One SQL value, as bound to a parameter or decoded from a column.
///
/// Decoding rules (the full table is in `docs/db.md`):
/// - MySQL signed integers → `Int`, unsigned integers and `BIT` → `UInt`,
///   `TINYINT(1)` → `Bool`, `FLOAT`/`DOUBLE` → `Float`, `DECIMAL` → `Text`
///   (exact), dates and times → `Text` (`YYYY-MM-DD hh:mm:ss[.ffffff]`),
///   binary strings and blobs → `Bytes`, other strings → `Text`.
/// - SQLite by storage class: `INTEGER` → `Int`, `REAL` → `Float`,
///   `TEXT` → `Text`, `BLOB` → `Bytes`.
///
/// ```
/// use switchboard::db::Value;
/// assert_eq!(Value::from(13), Value::Int(13));
/// assert_eq!(Value::from("M"), Value::Text("M".into()));
/// assert_eq!(Value::from(None::<i64>), Value::Null);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A boolean (MySQL `TINYINT(1)`; SQLite stores booleans as integers).
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer (MySQL `... UNSIGNED` columns and `BIT`).
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// Text (also `DECIMAL`, dates and times, `ENUM`, `JSON`).
    Text(String),
    /// Raw bytes (blobs and binary strings).
    Bytes(Vec<u8>),
}

impl Value {
    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as an `i64`, if it is an integer (or a bool) that fits.
    ///
    /// ```
    /// # use switchboard::db::Value;
    /// assert_eq!(Value::UInt(7).as_i64(), Some(7));
    /// assert_eq!(Value::Text("7".into()).as_i64(), None);
    /// ```
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The value as an `f64`, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            _ => None,
        }
    }

    /// The value as text, if it is `Text` (or `Bytes` holding UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as bytes, if it is `Bytes` or `Text`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::Text(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// Deserialize this value into any serde type.
    ///
    /// ```
    /// # use switchboard::db::Value;
    /// let n: u8 = Value::Int(42).decode().unwrap();
    /// assert_eq!(n, 42);
    /// let s: Option<String> = Value::Null.decode().unwrap();
    /// assert_eq!(s, None);
    /// ```
    pub fn decode<T: for<'de> Deserialize<'de>>(self) -> Result<T, DbError> {
        T::deserialize(self).map_err(|e| DbError::Decode {
            what: "value".into(),
            message: e.to_string(),
        })
    }
}

macro_rules! value_from {
    ($variant:ident: $($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v.into())
            }
        }
    )*};
}

value_from!(Int: i8, i16, i32, i64, u8, u16, u32);
value_from!(UInt: u64);
value_from!(Float: f32, f64);
value_from!(Bool: bool);
value_from!(Text: String, &str, &String, Box<str>);
value_from!(Bytes: Vec<u8>, &[u8]);

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::UInt(v as u64)
    }
}

impl From<isize> for Value {
    fn from(v: isize) -> Self {
        Value::Int(v as i64)
    }
}

impl<const N: usize> From<&[u8; N]> for Value {
    fn from(v: &[u8; N]) -> Self {
        Value::Bytes(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<&Value> for Value {
    fn from(v: &Value) -> Self {
        v.clone()
    }
}

/// One result row: column names plus one [`Value`] per column.
///
/// ```
/// # use switchboard::db::{Row, Value};
/// let row = Row::new(vec!["id".into(), "name".into()], vec![Value::Int(1), "ann".into()]);
/// assert_eq!(row.get("name"), Some(&Value::Text("ann".into())));
/// let (id, name): (i64, String) = row.decode().unwrap();
/// assert_eq!((id, name.as_str()), (1, "ann"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Column names, shared by all rows of one result.
    columns: Arc<[String]>,
    /// One value per column, in column order.
    values: Vec<Value>,
}

impl Row {
    /// Build a row from column names and values (mostly useful in tests).
    pub fn new(columns: Vec<String>, values: Vec<Value>) -> Self {
        Row {
            columns: columns.into(),
            values,
        }
    }

    pub(crate) fn with_shared(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        Row { columns, values }
    }

    /// The column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Consume the row into its values.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of the first column with this name.
    pub fn get(&self, column: &str) -> Option<&Value> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.values.get(i)
    }

    /// The value at this index.
    pub fn get_index(&self, index: usize) -> Option<&Value> {
        self.values.get(index)
    }

    /// Decode one column into a Rust type; a missing column is an error.
    ///
    /// ```
    /// # use switchboard::db::{Row, Value};
    /// let row = Row::new(vec!["age".into()], vec![Value::Int(13)]);
    /// let age: u32 = row.get_as("age").unwrap();
    /// assert_eq!(age, 13);
    /// assert!(row.get_as::<u32>("nope").is_err());
    /// ```
    pub fn get_as<T: for<'de> Deserialize<'de>>(&self, column: &str) -> Result<T, DbError> {
        let v = self.get(column).ok_or_else(|| DbError::Decode {
            what: format!("column `{column}`"),
            message: "no such column in the result".into(),
        })?;
        T::deserialize(v.clone()).map_err(|e| DbError::Decode {
            what: format!("column `{column}`"),
            message: e.to_string(),
        })
    }

    /// Deserialize the whole row: into a struct or map (by column name) or a
    /// tuple (by position).
    pub fn decode<T: for<'de> Deserialize<'de>>(self) -> Result<T, DbError> {
        T::deserialize(self).map_err(|e| DbError::Decode {
            what: "row".into(),
            message: e.to_string(),
        })
    }
}

type DeError = de::value::Error;

impl<'de> IntoDeserializer<'de, DeError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::UInt(u) => visitor.visit_u64(u),
            Value::Float(f) => visitor.visit_f64(f),
            Value::Text(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    /// SQLite (and MySQL `TINYINT`) keep booleans as 0/1 integers.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Int(0) | Value::UInt(0) => visitor.visit_bool(false),
            Value::Int(1) | Value::UInt(1) => visitor.visit_bool(true),
            other => other.deserialize_any(visitor),
        }
    }

    /// MySQL `DECIMAL` arrives as exact text; let it fill a float field.
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Text(s) => match s.trim().parse::<f64>() {
                Ok(f) => visitor.visit_f64(f),
                Err(_) => Value::Text(s).deserialize_any(visitor),
            },
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_integer(visitor)
    }

    /// `Vec<u8>` asks for a sequence, not bytes.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Bytes(b) => visitor.visit_seq(SeqDeserializer::new(b.into_iter())),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    /// Unit enum variants stored as text (`ENUM('M','F')`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Value::Text(s) => visitor.visit_enum(s.into_deserializer()),
            other => Err(de::Error::invalid_type(
                other.unexpected(),
                &"an enum as text",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf
        unit_struct tuple tuple_struct map struct identifier ignored_any
    }
}

impl Value {
    /// MySQL's `SUM()` and other `DECIMAL` results arrive as exact text
    /// (`"300"`); let a whole number in text fill an integer field.
    fn deserialize_integer<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        use de::Deserializer as _;
        match self {
            Value::Text(s) => {
                let t = s.trim();
                if let Ok(i) = t.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = t.parse::<u64>() {
                    visitor.visit_u64(u)
                } else {
                    Value::Text(s).deserialize_any(visitor)
                }
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn unexpected(&self) -> de::Unexpected<'_> {
        match self {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Int(i) => de::Unexpected::Signed(*i),
            Value::UInt(u) => de::Unexpected::Unsigned(*u),
            Value::Float(f) => de::Unexpected::Float(*f),
            Value::Text(s) => de::Unexpected::Str(s),
            Value::Bytes(b) => de::Unexpected::Bytes(b),
        }
    }
}

impl<'de> de::Deserializer<'de> for Row {
    type Error = DeError;

    /// Structs and maps see `column name → value`.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Row { columns, values } = self;
        let pairs = columns.iter().cloned().zip(values);
        visitor.visit_map(de::value::MapDeserializer::new(pairs))
    }

    /// Tuples and sequences see the values by position.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(SeqDeserializer::new(self.values.into_iter()))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    /// A newtype around a single-column row (`struct Id(i64)`) gets the value.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if self.values.len() == 1 {
            let mut values = self.values;
            match values.pop() {
                Some(v) => visitor.visit_newtype_struct(v),
                None => Err(de::Error::custom("empty row")),
            }
        } else {
            visitor.visit_newtype_struct(self)
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct map struct enum identifier ignored_any
    }
}
