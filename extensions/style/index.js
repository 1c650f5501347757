import './base.css';
import './jobs.css';
import './airlock.css';
