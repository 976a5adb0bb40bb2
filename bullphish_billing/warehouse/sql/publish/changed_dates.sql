-- The usage dates whose rows of {table} differ between the warehouse and the previous
-- analysts' file attached as {copy}: a date's rows are compared by their count and the sum of
-- a hash of each row's content columns ({columns}), so a date with a row added, removed or
-- changed on either side is listed, and a date whose rows are the same is not.
WITH here AS (
    SELECT usage_date, count(*) AS n, sum(hash({columns})) AS h
    FROM {table}
    GROUP BY usage_date
),

there AS (
    SELECT usage_date, count(*) AS n, sum(hash({columns})) AS h
    FROM {copy}.{table}
    GROUP BY usage_date
)

SELECT usage_date
FROM here FULL OUTER JOIN there USING (usage_date)
WHERE here.n IS DISTINCT FROM there.n OR here.h IS DISTINCT FROM there.h
ORDER BY usage_date
