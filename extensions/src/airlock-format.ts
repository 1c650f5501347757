/**
 * How the Export requests panel shows requests: state and file-status badges, what a state means
 * for the researcher, sizes and times.
 */
import { AirlockState, IAirlockFile, IAirlockSummary } from './airlock-api';
import { el } from './dom';
import { sizeText } from './jobs-format';

export const STATE_LABEL: { [s in AirlockState]: string } = {
  draft: 'draft',
  submitted: 'submitted',
  in_review: 'in review',
  changes_requested: 'changes requested',
  approved: 'approved',
  released: 'released',
  rejected: 'rejected',
  withdrawn: 'withdrawn'
};

/** What the state means for the author, and what to do next. */
export function stateHint(r: IAirlockSummary): string {
  switch (r.state) {
    case 'draft':
      return 'Draft: add files and a description of each, check, then submit. Files are copied when you submit.';
    case 'submitted':
      return 'Submitted: the files are frozen and wait for the output checkers.';
    case 'in_review':
      return r.phase === 'consolidation'
        ? 'In review: the independent reviews are in; the checkers are deciding.'
        : `In review: ${r.reviews_complete} of ${r.reviews_required} independent reviews complete. Their comments show once all are in.`;
    case 'changes_requested':
      return 'Changes requested: read the comments, update or remove files, then submit again.';
    case 'approved':
      return 'Approved: being released.';
    case 'released':
      return 'Released: download the approved files below (through the hub; every download is recorded).';
    case 'rejected':
      return 'Rejected: nothing leaves. The comments say why.';
    case 'withdrawn':
      return 'Withdrawn.';
  }
  return '';
}

export function stateBadge(state: AirlockState): HTMLSpanElement {
  const b = el('span', `vre-AirlockBadge vre-AirlockBadge-${state}`, STATE_LABEL[state] || state);
  b.dataset.state = state;
  return b;
}

export function fileBadge(status: IAirlockFile['status']): HTMLSpanElement {
  const b = el('span', `vre-AirlockBadge vre-AirlockFile-${status}`, status);
  b.dataset.status = status;
  return b;
}

export function sizeOf(n: number | null | undefined): string {
  return typeof n === 'number' ? sizeText(n) : '–';
}

/** "2026-12-04 16:03 UTC". */
export function timeText(iso: string | null): string {
  return iso ? `${iso.replace('T', ' ').slice(0, 16)} UTC` : '';
}

export const DECISION_LABEL: { [d: string]: string } = {
  approve: 'approved',
  changes: 'changes requested',
  reject: 'rejected'
};
