// Planned switchover (issue 10 item 5): what POST /promote and /demote answer, and how a site
// refuses one it cannot do (wrong role, busy, cannot drain): HTTP 409 with the message.

export interface RoleChangeAnswer {
  site: string;
  epoch: number;
  phase: string;
}

export class RoleChangeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RoleChangeError';
  }
}
