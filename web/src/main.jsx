import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { ApiClient, api } from './api.js';
import { App } from './App.jsx';
import { baseOf } from './router.jsx';
import './styles.css';

// /demo-app/* is the same console on a demo account (its refresh token kept apart from a real session).
const base = baseOf(window.location.pathname);
const client = base ? new ApiClient({ refreshKey: 'dumont.demo.refresh_token' }) : api;

createRoot(document.getElementById('root')).render(
  <StrictMode>
    <App api={client} base={base} />
  </StrictMode>,
);
