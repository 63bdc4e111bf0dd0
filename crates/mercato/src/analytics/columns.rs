//! Mart rows as Arrow record batches and back: each mart is a struct whose
//! fields are its columns, declared once with `mart_row!`.

use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};

/// A mart file that does not hold what its mart's columns say.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: {problem}")]
pub struct ColumnError {
    pub column: String,
    pub problem: String,
}

fn missing(column: &str, problem: &str) -> ColumnError {
    ColumnError {
        column: column.to_owned(),
        problem: problem.to_owned(),
    }
}

/// A Rust type a mart column holds.
pub trait MartValue: Sized + Clone {
    fn field(name: &str) -> Field;
    fn column(values: Vec<Self>) -> ArrayRef;
    fn read(batch: &RecordBatch, name: &str) -> Result<Vec<Self>, ColumnError>;
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ColumnError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| missing(name, "is not in the file"))
}

/// A batch's `int64` column, read in place (reports sum it without rows).
pub fn int64s<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a [i64], ColumnError> {
    let array = column(batch, name)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| missing(name, "is not int64"))?;
    Ok(array.values())
}

/// A batch's `date32` column, in days since 1970-01-01.
pub fn days<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a [i32], ColumnError> {
    let array = column(batch, name)?
        .as_primitive_opt::<Date32Type>()
        .ok_or_else(|| missing(name, "is not date32"))?;
    Ok(array.values())
}

/// A batch's `utf8` column.
pub fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, ColumnError> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| missing(name, "is not utf8"))
}

impl MartValue for i64 {
    fn field(name: &str) -> Field {
        Field::new(name, DataType::Int64, false)
    }
    fn column(values: Vec<Self>) -> ArrayRef {
        let mut b = Int64Builder::with_capacity(values.len());
        b.append_slice(&values);
        Arc::new(b.finish())
    }
    fn read(batch: &RecordBatch, name: &str) -> Result<Vec<Self>, ColumnError> {
        Ok(int64s(batch, name)?.to_vec())
    }
}

impl MartValue for String {
    fn field(name: &str) -> Field {
        Field::new(name, DataType::Utf8, false)
    }
    fn column(values: Vec<Self>) -> ArrayRef {
        let mut b = StringBuilder::with_capacity(values.len(), values.len() * 16);
        for v in values {
            b.append_value(v);
        }
        Arc::new(b.finish())
    }
    fn read(batch: &RecordBatch, name: &str) -> Result<Vec<Self>, ColumnError> {
        let array = strings(batch, name)?;
        Ok(array.iter().map(|v| v.unwrap_or("").to_owned()).collect())
    }
}

impl MartValue for Option<String> {
    fn field(name: &str) -> Field {
        Field::new(name, DataType::Utf8, true)
    }
    fn column(values: Vec<Self>) -> ArrayRef {
        let mut b = StringBuilder::with_capacity(values.len(), values.len() * 16);
        for v in values {
            b.append_option(v);
        }
        Arc::new(b.finish())
    }
    fn read(batch: &RecordBatch, name: &str) -> Result<Vec<Self>, ColumnError> {
        let array = strings(batch, name)?;
        Ok(array.iter().map(|v| v.map(str::to_owned)).collect())
    }
}

/// A calendar day (UTC): Arrow `date32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Day(pub NaiveDate);

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a date");

impl Day {
    pub fn days_since_epoch(self) -> i32 {
        i32::try_from((self.0 - EPOCH).num_days()).unwrap_or(i32::MAX)
    }
    pub fn from_days(days: i32) -> Day {
        Day(EPOCH + chrono::Duration::days(i64::from(days)))
    }
    pub fn of(at: DateTime<Utc>) -> Day {
        Day(at.date_naive())
    }
}

impl MartValue for Day {
    fn field(name: &str) -> Field {
        Field::new(name, DataType::Date32, false)
    }
    fn column(values: Vec<Self>) -> ArrayRef {
        let mut b = Date32Builder::with_capacity(values.len());
        for v in values {
            b.append_value(v.days_since_epoch());
        }
        Arc::new(b.finish())
    }
    fn read(batch: &RecordBatch, name: &str) -> Result<Vec<Self>, ColumnError> {
        Ok(days(batch, name)?
            .iter()
            .map(|d| Day::from_days(*d))
            .collect())
    }
}

/// A moment: Arrow `timestamp[us, UTC]`.
pub type At = DateTime<Utc>;

impl MartValue for At {
    fn field(name: &str) -> Field {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    }
    fn column(values: Vec<Self>) -> ArrayRef {
        let mut b = TimestampMicrosecondBuilder::with_capacity(values.len()).with_timezone("UTC");
        for v in values {
            b.append_value(v.timestamp_micros());
        }
        Arc::new(b.finish())
    }
    fn read(batch: &RecordBatch, name: &str) -> Result<Vec<Self>, ColumnError> {
        let array = column(batch, name)?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| missing(name, "is not timestamp[us]"))?;
        if array.null_count() > 0 {
            return Err(missing(name, "has nulls"));
        }
        array
            .values()
            .iter()
            .map(|us| {
                DateTime::from_timestamp_micros(*us).ok_or_else(|| missing(name, "is out of range"))
            })
            .collect()
    }
}

/// A mart's rows as a record batch, and back.
pub trait MartRow: Sized {
    /// The mart's directory name (`fact_order_lines`, …).
    const MART: &'static str;
    fn schema() -> arrow_schema::SchemaRef;
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ColumnError>;
}

/// Declares a mart's row struct and its `MartRow` (one column per field).
macro_rules! mart_row {
    ($mart:literal, $(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }

        impl $crate::analytics::columns::MartRow for $name {
            const MART: &'static str = $mart;
            fn schema() -> arrow_schema::SchemaRef {
                std::sync::Arc::new(arrow_schema::Schema::new(vec![
                    $(<$ty as $crate::analytics::columns::MartValue>::field(stringify!($field))),*
                ]))
            }
            fn to_batch(rows: &[Self]) -> Result<arrow_array::RecordBatch, arrow_schema::ArrowError> {
                let columns: Vec<arrow_array::ArrayRef> = vec![
                    $(<$ty as $crate::analytics::columns::MartValue>::column(
                        rows.iter().map(|r| r.$field.clone()).collect())),*
                ];
                arrow_array::RecordBatch::try_new(Self::schema(), columns)
            }
            fn from_batch(batch: &arrow_array::RecordBatch)
                -> Result<Vec<Self>, $crate::analytics::columns::ColumnError> {
                $(let mut $field = <$ty as $crate::analytics::columns::MartValue>::read(batch, stringify!($field))?.into_iter();)*
                let mut rows = Vec::with_capacity(batch.num_rows());
                for _ in 0..batch.num_rows() {
                    rows.push($name { $($field: match $field.next() {
                        Some(v) => v,
                        None => return Err($crate::analytics::columns::ColumnError {
                            column: stringify!($field).to_owned(),
                            problem: "is shorter than the batch".to_owned(),
                        }),
                    }),* });
                }
                Ok(rows)
            }
        }
    };
}
pub(crate) use mart_row;
