-- Named queries of inbound mail and the send cap (picloud/mail/,
-- picloud/runtime/outbound_mail.py).

-- app_by_slug --
SELECT id, slug FROM apps WHERE slug = %(slug)s;

-- email_insert --
INSERT INTO inbound_emails (id, app_id, received_at, mail_from, rcpt_to, subject, from_header,
                            message_id, size, fired, peer, raw)
VALUES (%(id)s, %(app_id)s, %(received_at)s, %(mail_from)s, %(rcpt_to)s, %(subject)s,
        %(from_header)s, %(message_id)s, %(size)s, %(fired)s::jsonb, %(peer)s, %(raw)s);

-- email_get --
SELECT id, app_id, received_at, mail_from, rcpt_to, subject, from_header, message_id, size,
       fired, peer
FROM inbound_emails WHERE app_id = %(app_id)s AND id = %(id)s;

-- email_raw --
SELECT raw FROM inbound_emails WHERE app_id = %(app_id)s AND id = %(id)s;

-- emails_of_app --
SELECT id, app_id, received_at, mail_from, rcpt_to, subject, from_header, message_id, size,
       fired, peer
FROM inbound_emails WHERE app_id = %(app_id)s
ORDER BY received_at DESC, id
LIMIT %(limit)s;

-- email_gc --
-- The oldest first, a batch at a time (inbound_emails_received_idx).
DELETE FROM inbound_emails WHERE id IN (
    SELECT id FROM inbound_emails WHERE received_at < %(before)s
    ORDER BY received_at LIMIT %(limit)s
);

-- email_gc_count --
SELECT count(*) AS n FROM inbound_emails WHERE received_at < %(before)s;

-- send_counts_gc --
DELETE FROM email_send_counts WHERE hour < %(before)s;

-- count_send --
-- One more message sent by the app this clock hour, unless that would pass
-- the cap: no row comes back then. Counted in the sender's transaction (a
-- rolled-back send is not counted); concurrent senders of one app queue on
-- the row's lock, so the cap holds exactly.
INSERT INTO email_send_counts AS c (app_id, hour, sent)
SELECT %(app_id)s, date_trunc('hour', NOW(), 'UTC'), 1
WHERE %(cap)s >= 1
ON CONFLICT (app_id, hour) DO UPDATE SET sent = c.sent + 1 WHERE c.sent < %(cap)s
RETURNING sent;
