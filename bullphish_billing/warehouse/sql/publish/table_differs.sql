-- Whether the rows of {table} (a table without usage dates, such as the mappings) differ
-- between the warehouse and the previous analysts' file attached as {copy}, compared as in
-- changed_dates.sql: by their count and the sum of a hash of each row's columns ({columns}).
SELECT
    (SELECT count(*) FROM {table}) IS DISTINCT FROM (SELECT count(*) FROM {copy}.{table})
    OR (SELECT sum(hash({columns})) FROM {table})
    IS DISTINCT FROM (SELECT sum(hash({columns})) FROM {copy}.{table})
