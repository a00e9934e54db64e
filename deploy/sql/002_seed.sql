-- Deterministic seed (API.md, "Data"): users 1..10000, each with settings and one account
-- holding 1000, so the expected total is 10,000,000. Runs only when the tables are empty.
INSERT INTO users (id, name, email, created_at)
SELECT g, 'User ' || g, 'user' || g || '@example.com',
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, 10000) AS g
ON CONFLICT DO NOTHING;

INSERT INTO settings (user_id, theme, locale, notifications)
SELECT g, CASE WHEN g % 2 = 0 THEN 'dark' ELSE 'light' END,
       (ARRAY['en-US', 'de-DE', 'fr-FR', 'ja-JP'])[1 + g % 4], g % 3 <> 0
FROM generate_series(1, 10000) AS g
ON CONFLICT DO NOTHING;

INSERT INTO accounts (id, user_id, balance)
SELECT g, g, 1000 FROM generate_series(1, 10000) AS g
ON CONFLICT DO NOTHING;
