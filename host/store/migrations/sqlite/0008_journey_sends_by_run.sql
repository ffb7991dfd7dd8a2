-- A send step looks up its earlier claim (on any channel) before choosing a channel again.
CREATE INDEX journey_sends_by_run ON journey_sends(run_id);
