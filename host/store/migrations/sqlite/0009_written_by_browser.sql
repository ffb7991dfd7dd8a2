-- Which contact points, consents and traits a browser source wrote, which anyone can do
-- with the key on the shop's page: a login merge never carries those into an identified
-- profile, whoever sends the login.
ALTER TABLE traits ADD COLUMN from_browser INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN from_browser INTEGER NOT NULL DEFAULT 0;
ALTER TABLE consents ADD COLUMN from_browser INTEGER NOT NULL DEFAULT 0;
